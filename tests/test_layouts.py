"""Foreign layouts written here with h5py as their documentation describes them (The Well,
PDEBench's tensor, per-variable and per-sample-group files): shapes, field names, coordinates,
window values, lazy reads and one-line errors for broken files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sciformer.errors import InputError
from sciformer.io.trajectories import TrajectoryFile
from tests.test_trajectories import spy_reads

RNG = np.random.default_rng(0)
B, T, W, H = 3, 6, 5, 4  # trajectories, steps, grid points along x and y


def _raises(path, match: str) -> None:
    """Opening `path` raises a one-line InputError naming the file and matching `match`."""
    with pytest.raises(InputError, match=match) as info:
        TrajectoryFile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _flags(ds: h5py.Dataset, sample: bool, time: bool, dims=(True, True)) -> None:
    ds.attrs["sample_varying"], ds.attrs["time_varying"] = sample, time
    ds.attrs["dim_varying"] = np.array(dims)


# ---- The Well -------------------------------------------------------------------------------
def _well_data() -> dict[str, np.ndarray]:
    """Fields of a toy Well file, each stored as its flags say."""
    return {
        "density": RNG.normal(size=(B, T, W, H)),  # varies in everything
        "forcing": RNG.normal(size=(T, W, H)),  # same for every trajectory
        "obstacle": RNG.normal(size=(W, H)),  # constant in trajectories and time
        "profile": RNG.normal(size=(B, T, W)),  # does not vary along y: axis left out
        "velocity": RNG.normal(size=(B, T, W, H, 2)),
        "stress": RNG.normal(size=(B, T, W, H, 2, 2)),
    }


def _write_well(path, data: dict[str, np.ndarray], time: np.ndarray | None = None) -> None:
    """A Well file following the documented layout (root attributes, dimensions/,
    boundary_conditions/, scalars/, t0/t1/t2_fields/ with per-field flags)."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "toy_flow", "grid_type": "cartesian",
                        "n_spatial_dims": 2, "n_trajectories": B, "Re": 100.0,
                        "simulation_parameters": ["Re", "Ma"], "Ma": 0.3})
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        dims["time"] = np.arange(T) * 0.5 if time is None else time
        dims["time"].attrs["sample_varying"] = time is not None and time.ndim == 2
        for axis, n in (("x", W), ("y", H)):
            dims[axis] = np.linspace(0.0, 1.0, n)
            _flags(dims[axis], False, False)
        bcs = f.create_group("boundary_conditions")
        for key, kind, axis in (("x_periodic", "periodic", "x"), ("y_wall", "wall", "y")):
            bcs.create_group(key).attrs.update({"bc_type": kind, "associated_dims": [axis]})
            bcs[key]["mask"] = np.ones(W if axis == "x" else H, bool)
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["Re", "amp", "energy"]
        for key, value, sample, t in (("Re", [100.0], False, False), ("amp", [1.0, 2.0, 3.0],
                                      True, False), ("energy", np.ones(T), False, True)):
            scalars[key] = np.asarray(value)
            _flags(scalars[key], sample, t)
        groups = {0: ["density", "forcing", "obstacle", "profile"], 1: ["velocity"],
                  2: ["stress"]}
        flags = {"forcing": (False, True, (True, True)), "obstacle": (False, False, (True, True)),
                 "profile": (True, True, (True, False))}
        for order, names in groups.items():
            g = f.create_group(f"t{order}_fields")
            g.attrs["field_names"] = [k for k in names if k in data]
            for key in g.attrs["field_names"]:
                g[key] = data[key].astype(np.float32)
                _flags(g[key], *flags.get(key, (True, True, (True, True))))


WELL_FIELDS = ["density", "forcing", "obstacle", "profile", "velocity_x", "velocity_y",
               "stress_xx", "stress_xy", "stress_yx", "stress_yy"]


def _well_expected(data: dict[str, np.ndarray]) -> np.ndarray:
    """The states (B, T, W, H, 10) the reader should build, by explicit broadcasting."""
    full = (B, T, W, H)
    parts = [data["density"][..., None],
             np.broadcast_to(data["forcing"], full)[..., None],
             np.broadcast_to(data["obstacle"], full)[..., None],
             np.broadcast_to(data["profile"][..., None], full)[..., None],
             data["velocity"], data["stress"].reshape(*full, 4)]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def test_well_layout_meta_and_windows(tmp_path, monkeypatch):
    data = _well_data()
    path = tmp_path / "toy_flow_00.hdf5"
    _write_well(path, data)
    expected = _well_expected(data)
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.layout, m.n_traj, m.n_time, m.state_shape) == ("the-well", B, T, (W, H, 10))
        assert m.field_names == WELL_FIELDS and m.space_dims == ("x", "y")
        assert m.spatial_shape == (W, H) and m.n_fields == 10 and m.system == "toy_flow"
        assert m.dt == pytest.approx(0.5) and len(m.time) == T
        np.testing.assert_allclose(m.coords["y"], np.linspace(0, 1, H))
        np.testing.assert_allclose(m.x, np.linspace(0, 1, W))
        assert m.param_names == ["Re", "amp", "Ma"]
        np.testing.assert_allclose(m.params, [[100, 1, 0.3], [100, 2, 0.3], [100, 3, 0.3]])
        assert m.info["constant_fields"] == ["obstacle"]
        assert m.info["time_varying_scalars"] == ["energy"]
        assert m.info["boundary_conditions"] == {"x_periodic": {"type": "periodic", "dims": ["x"]},
                                                 "y_wall": {"type": "wall", "dims": ["y"]}}
        reads = spy_reads(monkeypatch)
        out = tf.windows(1, 3, 2, 3)
        assert out.shape == (2, 3, W, H, 10) and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected[1:3, 2:5])
        window = (slice(1, 3), slice(2, 5))
        assert dict(reads) == {"/t0_fields/density": window, "/t0_fields/forcing": (slice(2, 5),),
                               "/t0_fields/obstacle": (), "/t0_fields/profile": window,
                               "/t1_fields/velocity": window, "/t2_fields/stress": window}
        np.testing.assert_array_equal(tf.trajectory(0), expected[0])


def test_well_per_trajectory_time(tmp_path):
    data = _well_data()
    same = tmp_path / "same.hdf5"
    _write_well(same, data, time=np.arange(T)[None] * 0.5 + np.array([[0.0], [1.0], [2.0]]))
    assert TrajectoryFile(same).meta.dt == pytest.approx(0.5)
    differ = tmp_path / "differ.hdf5"
    _write_well(differ, data, time=np.arange(T)[None] * np.array([[0.5], [0.5], [0.25]]))
    _raises(differ, "'dimensions/time' has different time steps in different trajectories")


def _edit(path, action) -> None:
    with h5py.File(path, "a") as f:
        action(f)


def _replace(key: str, value: np.ndarray):
    def action(f):
        attrs = dict(f[key].attrs)
        del f[key]
        f[key] = value
        f[key].attrs.update(attrs)
    return action


@pytest.mark.parametrize("action, match", [
    (_replace("t1_fields/velocity", np.zeros((B, T, W, H, 3), np.float32)),
     r"'t1_fields/velocity' has shape \(3, 6, 5, 4, 3\), expected \(3, 6, 5, 4, 2\) "
     r"\(sample_varying=True, time_varying=True, dim_varying=\[True, True\]\)"),
    (_replace("t0_fields/forcing", np.zeros((B, T, W, H), np.float32)),
     r"'t0_fields/forcing' has shape \(3, 6, 5, 4\), expected \(6, 5, 4\) "
     r"\(sample_varying=False"),
    (lambda f: f.attrs.__setitem__("n_spatial_dims", 3),
     "n_spatial_dims is 3 but 'dimensions' names 2 spatial axes"),
    (lambda f: f.__delitem__("dimensions"), "needs a group 'dimensions', found nothing"),
    (lambda f: f["t1_fields"].attrs.__setitem__("field_names", ["velocity", "momentum"]),
     "t1_fields.field_names lists 'momentum' but 't1_fields/momentum' is not a dataset"),
    (lambda f: f["dimensions"].__delitem__("time"), "'dimensions/time' must be a numeric"),
])
def test_well_errors(tmp_path, action, match):
    path = tmp_path / "broken.hdf5"
    _write_well(path, _well_data())
    _edit(path, action)
    _raises(path, match)


def test_well_without_fields(tmp_path):
    path = tmp_path / "empty.hdf5"
    _write_well(path, {})
    _raises(path, "t0_fields, t1_fields and t2_fields hold no fields")


# ---- PDEBench -------------------------------------------------------------------------------
def _h5(path, **datasets) -> None:
    """A file with the given root datasets ('attrs' gives root attributes)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(datasets.pop("attrs", {}))
        for key, value in datasets.items():
            f[key] = value


def _coords(n_time: int, x: int = 8, y: int = 6) -> dict[str, np.ndarray]:
    """PDEBench coordinates; t-coordinate with T + 1 entries as PDEBench stores it."""
    return {"x-coordinate": np.linspace(0, 1, x), "y-coordinate": np.linspace(0, 2, y),
            "t-coordinate": np.arange(n_time + 1) * 0.05}


def test_pdebench_2d_tensor_single_field(tmp_path, monkeypatch):
    tensor = RNG.normal(size=(3, 5, 8, 6)).astype(np.float32)
    path = tmp_path / "2D_DarcyLike.hdf5"
    _h5(path, tensor=tensor, **_coords(5))
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.layout, m.n_traj, m.n_time, m.state_shape) == ("pdebench-tensor", 3, 5,
                                                                 (8, 6, 1))
        assert m.space_dims == ("x", "y") and m.field_names is None
        assert m.dt == pytest.approx(0.05) and len(m.time) == 5  # the T + 1-th time dropped
        np.testing.assert_allclose(m.coords["y"], np.linspace(0, 2, 6))
        reads = spy_reads(monkeypatch)
        np.testing.assert_array_equal(tf.window(2, 1, 3), tensor[2, 1:4, ..., None])
        assert reads == [("/tensor", (slice(2, 3), slice(1, 4)))]


def test_pdebench_2d_tensor_with_channels_and_no_coordinates(tmp_path):
    tensor = RNG.normal(size=(2, 4, 8, 6, 3))
    with_coords = tmp_path / "c.hdf5"
    _h5(with_coords, tensor=tensor, **_coords(4))
    bare = tmp_path / "bare.hdf5"  # no coordinates: rank 5 is (N, T, X, Y, C)
    _h5(bare, tensor=tensor, attrs={"dt": 0.1})
    for path in (with_coords, bare):
        with TrajectoryFile(path) as tf:
            assert tf.meta.state_shape == (8, 6, 3) and tf.meta.space_dims == ("x", "y")
            np.testing.assert_allclose(tf.windows(0, 2, 1, 2), tensor[:, 1:3], rtol=1e-6)
    assert TrajectoryFile(bare).meta.coords == {}


def test_pdebench_1d_tensor_with_channel_axis(tmp_path):
    tensor = RNG.normal(size=(2, 4, 16, 1))
    path = tmp_path / "1D_Advection.hdf5"  # x-coordinate only: (N, T, X, C)
    _h5(path, tensor=tensor, **{"x-coordinate": np.linspace(0, 1, 16),
                                "t-coordinate": np.arange(5) * 0.1})
    m = TrajectoryFile(path).meta
    assert m.state_shape == (16, 1) and m.space_dims == ("x",) and len(m.x) == 16


def test_pdebench_2d_variables(tmp_path, monkeypatch):
    shape = (2, 4, 8, 6)
    data = {k: RNG.normal(size=shape).astype(np.float32)
            for k in ("density", "pressure", "Vx", "Vy", "temperature")}
    path = tmp_path / "2D_CFD_Rand_M0.1.hdf5"
    _h5(path, **data, **_coords(4), nu=np.zeros((2, 8, 6)))
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert m.layout == "pdebench-variables" and m.state_shape == (8, 6, 5)
        # PDEBench's channel order, then other datasets of the same shape (never dropped)
        assert m.field_names == ["density", "Vx", "Vy", "pressure", "temperature"]
        assert len(m.time) == 4 and m.dt == pytest.approx(0.05)
        reads = spy_reads(monkeypatch)
        out = tf.windows(0, 2, 1, 2)
        expected = np.stack([data[k][:, 1:3] for k in m.field_names], axis=-1)
        np.testing.assert_array_equal(out, expected)
        assert reads == [(f"/{k}", (slice(0, 2), slice(1, 3))) for k in m.field_names]


def test_pdebench_1d_variables(tmp_path):
    data = {k: RNG.normal(size=(2, 5, 16)) for k in ("density", "pressure", "Vx")}
    path = tmp_path / "1D_CFD.hdf5"
    _h5(path, **data, **{"x-coordinate": np.linspace(0, 1, 16),
                         "t-coordinate": np.arange(6) * 0.1})
    with TrajectoryFile(path) as tf:
        assert tf.meta.state_shape == (16, 3) and tf.meta.field_names == ["density", "Vx",
                                                                          "pressure"]
        np.testing.assert_allclose(tf.window(1, 0, 5)[..., 1], data["Vx"][1], rtol=1e-6)


def _write_groups(path, data: np.ndarray, grid: bool = True) -> None:
    """PDEBench's per-sample layout: groups 0000, 0001, ... with data and grid/{x, y, t}."""
    with h5py.File(path, "w") as f:
        for i, sample in enumerate(data):
            g = f.create_group(f"{i:04d}")
            g["data"] = sample
            if grid:
                g["grid/x"] = np.linspace(-1, 1, sample.shape[1])
                if sample.ndim == 4:
                    g["grid/y"] = np.linspace(-1, 1, sample.shape[2])
                g["grid/t"] = np.arange(sample.shape[0]) * 0.25


def test_pdebench_sample_groups_2d(tmp_path, monkeypatch):
    data = RNG.normal(size=(12, 5, 8, 6, 2)).astype(np.float32)  # 12 samples, (T, X, Y, C)
    path = tmp_path / "2D_diff-react_NA_NA.h5"
    _write_groups(path, data)
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.layout, m.n_traj, m.n_time, m.state_shape) == ("pdebench-groups", 12, 5,
                                                                 (8, 6, 2))
        assert m.dt == pytest.approx(0.25) and m.space_dims == ("x", "y")
        np.testing.assert_allclose(m.coords["x"], np.linspace(-1, 1, 8))
        reads = spy_reads(monkeypatch)
        np.testing.assert_array_equal(tf.windows(9, 11, 2, 3), data[9:11, 2:5])
        assert reads == [("/0009/data", slice(2, 5)), ("/0010/data", slice(2, 5))]


def test_pdebench_sample_groups_1d_and_without_grid(tmp_path):
    data = RNG.normal(size=(3, 5, 16, 1))  # 1-D reaction-diffusion: (T, X, 1) per sample
    path = tmp_path / "ReacDiff.h5"
    _write_groups(path, data)
    assert TrajectoryFile(path).meta.state_shape == (16, 1)
    bare = tmp_path / "bare.h5"
    _write_groups(bare, RNG.normal(size=(2, 5, 8, 6, 1)), grid=False)
    with h5py.File(bare, "a") as f:
        f.attrs["dt"] = 0.5
    m = TrajectoryFile(bare).meta
    assert m.state_shape == (8, 6, 1) and m.dt == 0.5 and m.coords == {}


def test_pdebench_sample_groups_must_match(tmp_path):
    path = tmp_path / "mixed.h5"
    _write_groups(path, RNG.normal(size=(3, 5, 8, 6, 2)))
    with h5py.File(path, "a") as f:
        del f["0002/data"]
        f["0002/data"] = np.zeros((4, 8, 6, 2))
    _raises(path, r"'0002/data' has shape \(4, 8, 6, 2\) but '0000/data' has shape "
                  r"\(5, 8, 6, 2\)")


@pytest.mark.parametrize("datasets, match", [
    ({"density": np.zeros((2, 4, 8, 6)), "Vx": np.zeros((2, 4, 8, 5)), "attrs": {"dt": 1.0}},
     r"'Vx' has shape \(2, 4, 8, 5\) but 'density' has shape \(2, 4, 8, 6\)"),
    ({"tensor": np.zeros((2, 4, 8, 6)), "x-coordinate": np.zeros(8),
      "t-coordinate": np.arange(3.0)}, "'t-coordinate' has 3 entries but states have 4"),
    ({"tensor": np.zeros((2, 4, 8, 6)), "x-coordinate": np.zeros(8),
      "y-coordinate": np.zeros(5), "attrs": {"dt": 1.0}},
     "'y-coordinate' has 5 points, states have 6 along y"),
    ({"tensor": np.zeros((2, 4, 8, 6)), "y-coordinate": np.zeros(6), "attrs": {"dt": 1.0}},
     "coordinates y-coordinate do not name the first 1 spatial axes"),
    ({"tensor": np.zeros((2, 4, 8, 6))},
     "no time information: neither a 't-coordinate' dataset nor a root attribute 'dt'"),
    ({"u": np.zeros((2, 4, 8)), "nu": np.zeros(3)},
     r"no dataset 'states' \(nor PDEBench 'tensor', variables density, Vx, Vy, Vz, pressure or "
     r"sample groups 0000/data, nor The Well's t0_fields/t1_fields/t2_fields\); "
     r"present: nu \(3,\) float64, u \(2, 4, 8\) float64$"),
])
def test_pdebench_errors(tmp_path, datasets, match):
    path = tmp_path / "bad.hdf5"
    _h5(path, **datasets)
    _raises(path, match)
