"""Tests for sciformer.io.fasta: parsing rules, every input error, and a fuzz property."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciformer.errors import InputError
from sciformer.io import fasta as fasta_mod
from sciformer.io.fasta import FastaRecord, count_records, read_fasta


def write(tmp_path: Path, text: str | bytes, name: str = "data.fa") -> Path:
    """Write `text` (str or raw bytes) to tmp_path/name and return the path."""
    path = tmp_path / name
    path.write_bytes(text.encode("ascii") if isinstance(text, str) else text)
    return path


def read_all(path: Path) -> list[FastaRecord]:
    """Read every record, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return list(read_fasta(path))


def expect_error(path: Path, *fragments: str) -> str:
    """Assert that reading `path` raises InputError naming the file and each fragment."""
    with pytest.raises(InputError) as info:
        list(read_fasta(path))
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- parsing ------------------------------------------------------------------------------

def test_basic_records_ids_descriptions_lines(tmp_path):
    path = write(tmp_path, ">sp|P1 first protein\nMKV\nLLA\n>sp|P2\nGG\n")
    assert read_all(path) == [
        FastaRecord("sp|P1", "first protein", "MKVLLA", 1),
        FastaRecord("sp|P2", "", "GG", 4),
    ]


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    text = b">a desc\nMKV\n>b\nAAA\n"
    gz_named_plain = write(tmp_path, gzip.compress(text), "data.fa")
    plain_named_gz = write(tmp_path, text, "plain.fa.gz")
    expected = [FastaRecord("a", "desc", "MKV", 1), FastaRecord("b", "", "AAA", 3)]
    assert read_all(gz_named_plain) == expected
    assert read_all(plain_named_gz) == expected
    assert count_records(gz_named_plain) == 2


def test_crlf_lowercase_and_trailing_star(tmp_path):
    path = write(tmp_path, ">a  some desc \r\nmk v\r\nll*\r\n\r\n>b\r\nAC\r\n")
    assert read_all(path) == [
        FastaRecord("a", "some desc", "MKVLL", 1),
        FastaRecord("b", "", "AC", 5),
    ]


def test_only_one_trailing_star_dropped_inner_star_is_unknown(tmp_path):
    path = write(tmp_path, ">a\nMK*V**\n")
    with pytest.warns(UserWarning, match="2 unknown residue letters in 1 records"):
        records = list(read_fasta(path))
    assert records[0].sequence == "MK*V*"


def test_unknown_letters_kept_and_one_warning_with_count(tmp_path):
    path = write(tmp_path, ">ok\nMKV\n>x1\nAJJ\n>x2 d\nJ\n>x3\nA#\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(read_fasta(path))
    assert [r.sequence for r in records] == ["MKV", "AJJ", "J", "A#"]
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "data.fa" in message and "4 unknown residue letters in 3 records" in message
    assert "'J' in record x1 at line 3" in message


def test_all_esm_letters_are_known(tmp_path):
    path = write(tmp_path, ">a\n" + fasta_mod.RESIDUE_LETTERS.lower() + "\n")
    assert read_all(path)[0].sequence == fasta_mod.RESIDUE_LETTERS


def test_mask_token_kept_any_case(tmp_path):
    path = write(tmp_path, ">a\nMK<mask>V<MASK>\n<Mask>L\n")
    assert read_all(path)[0].sequence == "MK<mask>V<mask><mask>L"


def test_broken_mask_token_counts_as_unknown(tmp_path):
    path = write(tmp_path, ">a\nMK<mas>V\n")
    with pytest.warns(UserWarning, match="2 unknown residue letters"):
        assert list(read_fasta(path))[0].sequence == "MK<MAS>V"


def test_multiline_and_blank_lines_before_first_record(tmp_path):
    path = write(tmp_path, "\n  \n>a\nMK\n\nV L\n>b\nG\n")
    records = read_all(path)
    assert records[0] == FastaRecord("a", "", "MKVL", 3)
    assert records[1].line == 7


def test_last_record_without_newline(tmp_path):
    assert read_all(write(tmp_path, ">a\nMK\n>b\nGG"))[1].sequence == "GG"


def test_long_record_read_whole_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta_mod, "_CHUNK", 4096)  # force the record across many chunks
    seq = ("MKVLAGSERT" * 10_000)
    body = "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))
    path = write(tmp_path, f">long\n{body}\n>next\nAA\n")
    records = read_all(path)
    assert len(records[0].sequence) == 100_000 and records[0].sequence == seq
    assert records[1].line == 2 + -(-100_000 // 60)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_chunk_boundaries_do_not_change_result(tmp_path, monkeypatch, chunk):
    text = "\n>a x\nMK\r\nV\n>b\n\nGG*\n>c\nL"
    path = write(tmp_path, text)
    expected = read_all(path)
    monkeypatch.setattr(fasta_mod, "_CHUNK", chunk)
    assert read_all(path) == expected
    assert [r.line for r in expected] == [2, 5, 8]
    assert count_records(path) == 3


def test_count_records(tmp_path):
    assert count_records(write(tmp_path, ">a\nM\n>b\nK\n>c\nV\n")) == 3


def test_reader_is_lazy(tmp_path):
    """The first record comes out before a later error is reached (streaming)."""
    path = write(tmp_path, ">a\nMK\n>b\n>c\nAA\n")
    records = read_fasta(path)
    assert next(records).id == "a"
    with pytest.raises(InputError, match="line 3: empty record 'b'"):
        next(records)


# --- errors -------------------------------------------------------------------------------

def test_error_missing_file(tmp_path):
    expect_error(tmp_path / "nope.fa", "cannot open")


def test_error_empty_file(tmp_path):
    expect_error(write(tmp_path, ""), "no FASTA records")


def test_error_blank_lines_only(tmp_path):
    expect_error(write(tmp_path, "\n \n\n"), "no FASTA records")


def test_error_text_before_first_header(tmp_path):
    expect_error(write(tmp_path, "\nhello world\n>a\nMK\n"), "line 2", "text before the first '>'")


def test_error_empty_record(tmp_path):
    path = write(tmp_path, ">a\nMK\n>sp|P1 desc\n\n>c\nMK\n")
    expect_error(path, "line 3", "empty record 'sp|P1'")


def test_error_record_of_only_a_stop(tmp_path):
    expect_error(write(tmp_path, ">a\n*\n"), "line 1", "empty record 'a'")


def test_error_empty_last_record(tmp_path):
    expect_error(write(tmp_path, ">a\nMK\n>z"), "line 3", "empty record 'z'")


def test_error_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path, ">a\nMK\n>b\nGG\n>a other\nLL\n")
    expect_error(path, "line 5", "duplicate id 'a'", "first seen at line 1")


def test_error_header_without_id(tmp_path):
    expect_error(write(tmp_path, ">a\nMK\n>   \nGG\n"), "line 3", "header with no id")


def test_error_binary_garbage(tmp_path):
    expect_error(write(tmp_path, b">a\nMK\nGG\x00\x01\xff\n"), "line 3", "not a text FASTA")


def test_error_non_ascii_header(tmp_path):
    expect_error(write(tmp_path, ">a caf\xc3\xa9\nMK\n".encode("latin-1")), "line 1", "not a text")


def test_error_truncated_gzip(tmp_path):
    data = gzip.compress(b">a\nMKV\n" * 1000)
    expect_error(write(tmp_path, data[: len(data) // 2], "cut.fa.gz"), "gzip")


# --- fuzz ---------------------------------------------------------------------------------

@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b">", b"a", b"J", b"*", b"\n", b"\r\n", b" ", b"<mask>", b"\x00"]),
             max_size=40).map(b"".join),
))
def test_random_bytes_parse_or_raise_input_error(tmp_path, data):
    path = write(tmp_path, data, "fuzz.fa")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = list(read_fasta(path))
    except InputError as exc:
        assert "fuzz.fa" in str(exc)
    else:
        assert records and all(r.id and r.sequence for r in records)
        assert len({r.id for r in records}) == len(records)
