"""Trajectory HDF5: round trips through TrajectoryFile and xarray, foreign layouts (PDEBench,
plain xarray), every bad input, lazy per-process reading and atomic writes."""

from __future__ import annotations

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciformer.errors import InputError
from sciformer.io import trajectories, trajectory_writer
from sciformer.io.trajectories import TrajectoryFile, write_trajectories

RNG = np.random.default_rng(0)


def _raises(path, match: str, **kwargs) -> None:
    """Opening `path` raises InputError naming the file and matching `match`."""
    with pytest.raises(InputError, match=match) as info:
        TrajectoryFile(path, **kwargs)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _h5(path, **datasets) -> None:
    """A file with the given datasets; key 'attrs' gives root attributes."""
    with h5py.File(path, "w") as f:
        f.attrs.update(datasets.pop("attrs", {}))
        for key, value in datasets.items():
            f[key] = value


def test_ode_round_trip_h5py_and_xarray(tmp_path):
    states = RNG.normal(size=(3, 20, 3)).astype(np.float32)
    params = np.array([[10.0, 28.0], [10.0, 29.0], [10.0, 30.0]])
    path = tmp_path / "ode.h5"
    write_trajectories(path, states, dt=0.01, system="lorenz63", lyapunov_time=1.1,
                       field_names=["x", "y", "z"], params=params, param_names=["sigma", "rho"],
                       units={"time": "s"}, attrs={"seed": 3})
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.n_traj, m.n_time, m.state_shape, m.n_features) == (3, 20, (3,), 3)
        assert m.dt == pytest.approx(0.01) and m.system == "lorenz63"
        assert m.lyapunov_time == pytest.approx(1.1) and m.field_names == ["x", "y", "z"]
        assert m.param_names == ["sigma", "rho"] and np.array_equal(m.params, params)
        np.testing.assert_allclose(m.time, np.arange(20) * 0.01)
        for i in range(3):
            np.testing.assert_array_equal(tf.trajectory(i), states[i])
    with h5py.File(path) as f:  # the contract, as any h5py script sees it
        assert f["states"].shape == (3, 20, 3) and f.attrs["system"] == "lorenz63"
        assert [str(n) for n in f["params"].attrs["names"]] == ["sigma", "rho"]
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["states"].dims == ("trajectory", "time", "field")
        assert ds["time"].attrs["units"] == "s" and ds["states"].attrs["units"] == "1"
        assert ds["params"].dims == ("trajectory", "param")
        assert list(ds["params"].attrs["names"]) == ["sigma", "rho"]
        assert list(ds["field"].values) == ["x", "y", "z"]
        assert ds.attrs["system"] == "lorenz63" and ds.attrs["seed"] == 3
        np.testing.assert_array_equal(ds["states"].sel(field="y").values, states[..., 1])


def test_field_round_trip_with_grid_and_quantiles(tmp_path):
    states = RNG.normal(size=(2, 15, 8, 1))
    quantiles = RNG.normal(size=(3, 2, 15, 8, 1))
    x = np.linspace(0.0, 1.0, 8, endpoint=False)
    path = tmp_path / "field.h5"
    write_trajectories(path, states, time=np.arange(15) * 0.5, field_names=["u"], x=x,
                       quantiles=quantiles, quantile_levels=[0.1, 0.5, 0.9])
    with TrajectoryFile(path) as tf:
        assert tf.meta.state_shape == (8, 1) and tf.meta.dt == pytest.approx(0.5)
        np.testing.assert_allclose(tf.meta.x, x)
        out = tf.window(1, 3, 4)
        assert out.dtype == np.float32 and out.shape == (4, 8, 1)
        np.testing.assert_allclose(out, states[1, 3:7], rtol=1e-6)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["states"].dims == ("trajectory", "time", "x", "field")
        assert ds["quantiles"].dims == ("quantile", "trajectory", "time", "x", "field")
        np.testing.assert_allclose(ds["quantile"].values, [0.1, 0.5, 0.9])
        np.testing.assert_allclose(ds["quantiles"].attrs["levels"], [0.1, 0.5, 0.9])
        np.testing.assert_allclose(ds["x"].values, x)
        np.testing.assert_allclose(ds["quantiles"].values, quantiles)


def test_2d_field_round_trip_with_named_dims(tmp_path, monkeypatch):
    states = RNG.normal(size=(3, 7, 8, 6, 2)).astype(np.float32)
    x, y = np.linspace(0, 1, 8), np.linspace(0, 2, 6)
    path = tmp_path / "field2d.h5"
    write_trajectories(path, states, dt=0.1, field_names=["u", "v"], x=x, y=y, system="demo")
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.n_traj, m.n_time, m.state_shape, m.n_features) == (3, 7, (8, 6, 2), 96)
        assert (m.space_dims, m.spatial_shape, m.n_fields, m.layout) == (("x", "y"), (8, 6), 2,
                                                                         "states")
        assert m.field_names == ["u", "v"] and list(m.coords) == ["x", "y"]
        np.testing.assert_allclose(m.coords["y"], y)
        np.testing.assert_allclose(m.x, x)
        reads = spy_reads(monkeypatch)
        out = tf.windows(1, 3, 2, 4)
        assert out.shape == (2, 4, 8, 6, 2)
        np.testing.assert_array_equal(out, states[1:3, 2:6])
        assert reads == [("/states", (slice(1, 3), slice(2, 6)))]
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["states"].dims == ("trajectory", "time", "x", "y", "field")
        np.testing.assert_allclose(ds["y"].values, y)
        np.testing.assert_array_equal(ds["states"].sel(field="v").values, states[..., 1])


def test_3d_fields_and_xarray_dimension_names(tmp_path):
    states = RNG.normal(size=(2, 3, 4, 5, 6, 1))
    path = tmp_path / "f3d.h5"
    write_trajectories(path, states, dt=1.0, z=np.arange(6.0))
    m = TrajectoryFile(path).meta
    assert m.state_shape == (4, 5, 6, 1) and m.space_dims == ("x", "y", "z")
    assert list(m.coords) == ["z"] and m.x is None
    # an xarray file names its own axes; the reader keeps the names and their coordinates
    lat, lon = np.linspace(-60, 60, 5), np.linspace(0, 350, 8)
    geo = tmp_path / "geo.nc"
    xr.Dataset({"states": (("trajectory", "time", "lat", "lon", "field"),
                           RNG.normal(size=(2, 4, 5, 8, 1)))},
               coords={"time": np.arange(4) * 6.0, "lat": lat, "lon": lon}).to_netcdf(
        geo, engine="h5netcdf")
    m = TrajectoryFile(geo).meta
    assert m.space_dims == ("lat", "lon") and m.dt == 6.0
    np.testing.assert_allclose(m.coords["lon"], lon)
    np.testing.assert_allclose(m.x, lat)


def test_quantiles_with_other_horizon_get_their_own_dim(tmp_path):
    path = tmp_path / "q.h5"
    write_trajectories(path, np.zeros((2, 10, 3)), dt=1.0,
                       quantiles=np.zeros((2, 2, 4, 3)), quantile_levels=[0.25, 0.75])
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["quantiles"].dims == ("quantile", "trajectory", "horizon", "field")


def spy_reads(monkeypatch) -> list[tuple[str, object]]:
    """Record (dataset name, key) of every h5py dataset read from now on."""
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        reads.append((self.name, key))
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return reads


def test_window_reads_only_the_slice(tmp_path, monkeypatch):
    states = np.arange(2 * 50 * 3, dtype=np.float64).reshape(2, 50, 3)
    path = tmp_path / "w.h5"
    write_trajectories(path, states, dt=1.0)
    tf = TrajectoryFile(path)
    reads = spy_reads(monkeypatch)
    np.testing.assert_array_equal(tf.window(1, 10, 5), states[1, 10:15])
    assert reads == [("/states", (slice(1, 2), slice(10, 15)))]
    for bad in [(2, 0, 1), (-1, 0, 1), (0, 46, 5), (0, -1, 2)]:
        with pytest.raises(IndexError, match="w.h5"):
            tf.window(*bad)
    assert tf.windows(1, 1, 0, 4).shape == (0, 4, 3)


def test_pdebench_layout(tmp_path):
    tensor = RNG.normal(size=(3, 11, 16)).astype(np.float32)
    path = tmp_path / "1D_Burgers_Sols_Nu0.01.hdf5"
    _h5(path, tensor=tensor, **{"t-coordinate": np.arange(12) * 0.2,
                                "x-coordinate": np.linspace(0, 1, 16)})
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.n_traj, m.n_time, m.state_shape) == (3, 11, (16, 1))
        assert m.dt == pytest.approx(0.2) and len(m.time) == 11 and len(m.x) == 16
        np.testing.assert_array_equal(tf.window(2, 1, 3), tensor[2, 1:4, :, None])


def test_plain_xarray_files(tmp_path):
    states = RNG.normal(size=(2, 6, 4, 1))
    dims = ("trajectory", "time", "x", "field")
    with_time = tmp_path / "coord.nc"
    xr.Dataset({"states": (dims, states)}, coords={"time": np.arange(6) * 0.25}).to_netcdf(
        with_time, engine="h5netcdf")
    with TrajectoryFile(with_time) as tf:
        assert tf.meta.dt == pytest.approx(0.25) and tf.meta.x is None
        np.testing.assert_allclose(tf.trajectory(1), states[1], rtol=1e-6)
    # a `time` dimension without values is a bare netCDF dimension: the dt attribute is used
    dt_only = tmp_path / "dt.nc"
    xr.Dataset({"states": (dims, states)}, attrs={"dt": 0.1}).to_netcdf(dt_only, engine="h5netcdf")
    with TrajectoryFile(dt_only) as tf:
        assert tf.meta.dt == pytest.approx(0.1) and tf.meta.time is None
    bare = tmp_path / "bare.nc"
    xr.Dataset({"states": (dims, states)}).to_netcdf(bare, engine="h5netcdf")
    _raises(bare, "no time information")


def test_pickled_and_forked_readers_reopen(tmp_path):
    states = RNG.normal(size=(4, 12, 2)).astype(np.float32)
    path = tmp_path / "p.h5"
    write_trajectories(path, states, dt=1.0)
    tf = TrajectoryFile(path)
    tf.window(0, 0, 2)  # the parent now holds an open handle
    clone = pickle.loads(pickle.dumps(tf))
    np.testing.assert_array_equal(clone.window(3, 2, 5), states[3, 2:7])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        out = pool.starmap(tf.window, [(i, 1, 3) for i in range(4)])
    for i in range(4):
        np.testing.assert_array_equal(out[i], states[i, 1:4])
    tf.close()


def test_require_length(tmp_path):
    path = tmp_path / "f.h5"
    write_trajectories(path, np.zeros((1, 50, 2)), dt=1.0)
    tf = TrajectoryFile(path)
    tf.require_length(50, "context 34 + horizon 16")
    with pytest.raises(InputError) as info:
        tf.require_length(80, "context 64 + horizon 16")
    expected = "trajectories have 50 time steps, fewer than context 64 + horizon 16"
    assert str(info.value) == f"{path}: {expected}"


def test_not_hdf5_and_missing(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("states,time\n1,2\n")
    _raises(text, "not an HDF5 file")
    _raises(tmp_path / "absent.h5", "no such file")


LAYOUTS = r"\(n_traj, n_time, n_channels\) or \(n_traj, n_time, \*space, n_fields\)"
NO_TIME = "no time information: neither a 'time' dataset nor a root attribute 'dt'"
DT1 = {"dt": 1.0}


@pytest.mark.parametrize("datasets, match", [
    ({"foo": np.zeros((2, 3, 1)), "attrs": DT1},
     r"no dataset 'states' \(nor PDEBench 'tensor', .*; present: foo \(2, 3, 1\) float64$"),
    ({"states": np.zeros((2, 3)), "attrs": DT1}, r"shape \(2, 3\), expected " + LAYOUTS),
    ({"states": np.zeros((1, 2, 3, 4, 5, 6, 7)), "attrs": DT1},
     r"shape \(1, 2, 3, 4, 5, 6, 7\).* with 1-3 spatial axes"),
    ({"tensor": np.zeros((2, 3, 4, 5, 6, 7)), "attrs": DT1},
     r"'tensor' has shape \(2, 3, 4, 5, 6, 7\), expected the 2 leading axes"),
    ({"tensor": np.zeros((2, 3, 4, 5, 6)), "x-coordinate": np.arange(4.0), "attrs": DT1},
     r"'tensor' has shape \(2, 3, 4, 5, 6\)"),
    ({"states": np.zeros((2, 3, 1))}, NO_TIME),
    ({"states": np.zeros((2, 3, 1)), "time": np.arange(4.0)},
     "'time' has 4 entries but states have 3 time steps"),
    ({"states": np.zeros((2, 3, 1)), "time": np.array([0.0, 2.0, 1.0])}, "not strictly increasing"),
    ({"states": np.zeros((2, 3, 1), dtype=np.int32), "attrs": DT1},
     "dtype int32, expected float32 or float64"),
    ({"states": np.zeros((0, 3, 1)), "attrs": DT1}, "empty"),
    ({"states": np.zeros((2, 3, 1)), "attrs": {"dt": -1.0}}, "'dt' must be positive"),
    ({"states": np.zeros((2, 3, 1)), "attrs": {"dt": "fast"}}, "'dt' must be one number"),
    ({"states": np.zeros((2, 3, 2)), "attrs": {**DT1, "field_names": ["a", "b", "c"]}},
     "'field_names' has 3 names, expected 2"),
    ({"states": np.zeros((2, 3, 1)), "params": np.zeros((3, 2)), "attrs": DT1},
     r"'params' has shape \(3, 2\)"),
])
def test_structure_errors(tmp_path, datasets, match):
    path = tmp_path / "bad.h5"
    _h5(path, **datasets)
    _raises(path, match)


def test_states_group_and_param_names(tmp_path):
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as f:
        f.create_group("states")
    _raises(path, "'states' is a group")
    path = tmp_path / "names.h5"
    with h5py.File(path, "w") as f:
        f["states"], f.attrs["dt"] = np.zeros((2, 3, 1)), 1.0
        f["params"] = np.zeros((2, 2))
        f["params"].attrs["names"] = ["a"]
    _raises(path, "'params.names' has 1 names, expected 2")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nonfinite_named_by_trajectory_and_step(tmp_path, bad_value):
    states = np.zeros((4, 30, 5, 1))
    states[2, 17, 3, 0] = bad_value
    states[3, 1, 0, 0] = bad_value  # a later trajectory: the first one must be reported
    path = tmp_path / "nan.h5"
    write_trajectories(path, states, dt=1.0)
    _raises(path, "trajectory 2 step 17: NaN or Inf")
    assert TrajectoryFile(path, check_finite=False).meta.n_traj == 4


def test_nonfinite_scan_in_small_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(trajectories, "_SCAN_BYTES", 7 * 8)  # 7 float64 steps per block
    states = np.zeros((3, 40, 1))
    states[1, 33, 0] = np.nan
    states[2, 0, 0] = np.nan
    path = tmp_path / "blocks.h5"
    write_trajectories(path, states, dt=1.0)
    _raises(path, "trajectory 1 step 33")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.h5"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trajectory_writer, "_write_root_attrs", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_trajectories(path, np.zeros((1, 4, 2)), dt=1.0)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_trajectories(path, np.ones((1, 4, 2)), dt=1.0)  # an old file survives a failed rewrite
    monkeypatch.setattr(trajectory_writer, "_write_root_attrs", boom)
    with pytest.raises(RuntimeError):
        write_trajectories(path, np.zeros((1, 4, 2)), dt=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    assert TrajectoryFile(path).trajectory(0).sum() == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"states": np.zeros((2, 3))}, "rank 2"),
    ({"states": np.zeros((2, 3, 1), dtype=int), "dt": 1.0}, "float32 or float64"),
    ({"states": np.zeros((2, 3, 1))}, "needs dt or time"),
    ({"states": np.zeros((2, 3, 1)), "time": np.arange(4.0)}, r"time has shape \(4,\)"),
    ({"states": np.zeros((2, 3, 2)), "dt": 1.0, "field_names": ["a"]}, "1 field_names for 2"),
    ({"states": np.zeros((2, 3, 4, 5, 1)), "dt": 1.0, "y": np.zeros(4)}, r"y has shape \(4,\)"),
    ({"states": np.zeros((2, 3, 4, 1)), "dt": 1.0, "y": np.zeros(1)}, r"y has shape \(1,\)"),
    ({"states": np.zeros((2, 3, 1)), "dt": 1.0, "params": np.zeros(2)}, "params has shape"),
    ({"states": np.zeros((2, 3, 1)), "dt": 1.0, "quantiles": np.zeros((2, 2, 3, 1)),
      "quantile_levels": [0.5]}, "does not fit 1 levels"),
])
def test_writer_rejects_bad_arguments(tmp_path, kwargs, match):
    states = kwargs.pop("states")
    with pytest.raises(ValueError, match=match):
        write_trajectories(tmp_path / "w.h5", states, **kwargs)
    assert not (tmp_path / "w.h5").exists()


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2048), signed=st.booleans())
def test_random_bytes_only_raise_input_error(tmp_path, body, signed):
    path = tmp_path / "random.h5"
    path.write_bytes((HDF5_SIGNATURE if signed else b"") + body)
    with pytest.raises(InputError) as info:
        TrajectoryFile(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_truncated_file_raises_input_error(tmp_path, fraction):
    full = tmp_path / "full.h5"
    write_trajectories(full, RNG.normal(size=(4, 300, 3)), dt=0.1, field_names=["a", "b", "c"])
    data = full.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    _raises(cut, "cut.h5")


# ---- block-by-block writing ------------------------------------------------------------------
def test_writer_in_blocks_equals_one_call(tmp_path):
    states = RNG.normal(size=(7, 6, 4, 2)).astype(np.float32)
    q = np.stack([states - 1, states, states + 1])
    whole, blocks = tmp_path / "whole.h5", tmp_path / "blocks.h5"
    kwargs = {"dt": 0.5, "system": "demo", "field_names": ["u", "v"], "x": np.arange(4.0)}
    write_trajectories(whole, states, quantiles=q, quantile_levels=[0.1, 0.5, 0.9], **kwargs)
    with trajectory_writer.TrajectoryWriter(blocks, states.shape, quantile_levels=[0.1, 0.5, 0.9],
                                            **kwargs) as w:
        for i0 in (0, 3, 6):
            w.write(states[i0:i0 + 3], q[:, i0:i0 + 3])
    with xr.open_dataset(whole, engine="h5netcdf") as a, \
            xr.open_dataset(blocks, engine="h5netcdf") as b:
        xr.testing.assert_identical(a.load(), b.load())
    np.testing.assert_array_equal(TrajectoryFile(blocks).windows(2, 5, 1, 4), states[2:5, 1:5])


def test_writer_incomplete_or_failed_leaves_no_file(tmp_path):
    path = tmp_path / "part.h5"
    with pytest.raises(ValueError, match="only 2 of 5 trajectories"):
        with trajectory_writer.TrajectoryWriter(path, (5, 3, 1), dt=1.0) as w:
            w.write(np.zeros((2, 3, 1)))
    with pytest.raises(RuntimeError, match="model crashed"):
        with trajectory_writer.TrajectoryWriter(path, (5, 3, 1), dt=1.0) as w:
            w.write(np.zeros((2, 3, 1)))
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("block, quantiles, match", [
    (np.zeros((2, 4, 1)), None, r"block of shape \(2, 4, 1\) does not fit"),
    (np.zeros((6, 3, 1)), None, "does not fit"),
    (np.zeros((2, 3, 1)), np.zeros((1, 2, 3, 1)), "quantiles must be given exactly"),
])
def test_writer_rejects_blocks_that_do_not_fit(tmp_path, block, quantiles, match):
    with pytest.raises(ValueError, match=match):
        with trajectory_writer.TrajectoryWriter(tmp_path / "w.h5", (5, 3, 1), dt=1.0) as w:
            w.write(block, quantiles)
    assert not (tmp_path / "w.h5").exists()


def test_short_trajectories_share_chunks(tmp_path):
    """Ten thousand 8-step trajectories are stored in a few chunks, not ten thousand."""
    path = tmp_path / "many.h5"
    write_trajectories(path, np.zeros((10_000, 8, 3), np.float32), dt=1.0)
    with h5py.File(path) as f:
        assert f["states"].chunks[0] == 10_000 and f["states"].id.get_num_chunks() == 1
