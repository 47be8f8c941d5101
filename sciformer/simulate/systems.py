"""A library of published chaotic ODE flows (dimension 3-6) for the dynamics zoo.

Each `FlowSystem` holds a vector field written here from its paper, default parameters at which
the paper (or the review cited) reports chaos, a typical initial condition, and a
characteristic `timescale`, measured here at the defaults with `sciformer.simulate.zoo`: the
mean oscillation period of the fastest variable, or two Lyapunov times where that is shorter
(the labyrinth flows wander between wells, so their "period" is long and says little about
predictability). `steps_per_timescale` RK4 steps per timescale keep the integration within
1e-5 (relative to the attractor's size) of an adaptive DOP853 reference over one timescale
(tests/test_zoo.py checks it).

Lorenz-63 and Lorenz-96 are not here: they are the systems `sciformer simulate` ships. `HELD_OUT`
names the base systems kept for evaluation only; `training_systems()` is the library without
them, the only systems the zoo corpus draws from.

Vector fields take states (..., d) and a parameter dict and return (..., d), so a batch of
trajectories is integrated as one array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sciformer.errors import ConfigError

Params = dict[str, float]
VectorField = Callable[[np.ndarray, Params], np.ndarray]


@dataclass(frozen=True)
class FlowSystem:
    """One published autonomous ODE flow x' = f(x; params)."""

    name: str
    rhs: VectorField
    params: Params  # defaults, chaotic
    x0: tuple[float, ...]  # a typical initial condition (in the basin of the attractor)
    timescale: float  # characteristic timescale in the system's time units, at the defaults
    citation: str
    steps_per_timescale: int = 200  # RK4 steps per `timescale` for an accurate integration
    field_names: tuple[str, ...] = field(default=())

    @property
    def dim(self) -> int:
        """Number of state variables."""
        return len(self.x0)

    def names(self) -> list[str]:
        """Names of the state variables (x, y, z, w, v, u unless given)."""
        return list(self.field_names) if self.field_names else list("xyzwvu"[:self.dim])

    def __call__(self, x: np.ndarray, params: Params | None = None) -> np.ndarray:
        """The vector field at states x (..., d) with `params` (defaults if None)."""
        return self.rhs(x, self.params if params is None else params)


def _xyz(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x[..., 0], x[..., 1], x[..., 2]


def _stack(*cols: np.ndarray) -> np.ndarray:
    """Columns (...,) -> (..., n_cols); filling an empty array is ~3x faster than np.stack
    on the small batches the integrator passes, and the vector field dominates its cost."""
    out = np.empty(max((np.shape(c) for c in cols), key=len) + (len(cols),))
    for i, col in enumerate(cols):
        out[..., i] = col
    return out


# --- Rössler family -------------------------------------------------------------------------

def rossler(s: np.ndarray, p: Params) -> np.ndarray:
    """Rössler (1976): x' = -y - z, y' = x + a y, z' = b + z (x - c)."""
    x, y, z = _xyz(s)
    return _stack(-y - z, x + p["a"] * y, p["b"] + z * (x - p["c"]))


def hyper_rossler(s: np.ndarray, p: Params) -> np.ndarray:
    """Rössler (1979) hyperchaos: x' = -y - z, y' = x + a y + w, z' = b + x z,
    w' = -c z + d w."""
    x, y, z, w = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    return _stack(-y - z, x + p["a"] * y + w, p["b"] + x * z, -p["c"] * z + p["d"] * w)


# --- Lorenz-like quadratic flows ---------------------------------------------------------

def chen(s: np.ndarray, p: Params) -> np.ndarray:
    """Chen & Ueta (1999): x' = a (y - x), y' = (c - a) x - x z + c y, z' = x y - b z."""
    x, y, z = _xyz(s)
    a, b, c = p["a"], p["b"], p["c"]
    return _stack(a * (y - x), (c - a) * x - x * z + c * y, x * y - b * z)


def lu(s: np.ndarray, p: Params) -> np.ndarray:
    """Lü & Chen (2002): x' = a (y - x), y' = -x z + c y, z' = x y - b z."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * (y - x), -x * z + p["c"] * y, x * y - p["b"] * z)


def hyper_chen(s: np.ndarray, p: Params) -> np.ndarray:
    """Li, Tang & Chen (2005) hyperchaotic Chen: x' = a (y - x) + w,
    y' = d x - x z + c y, z' = x y - b z, w' = y z + r w."""
    x, y, z, w = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    return _stack(p["a"] * (y - x) + w, p["d"] * x - x * z + p["c"] * y, x * y - p["b"] * z,
                  y * z + p["r"] * w)


def hyper_lu(s: np.ndarray, p: Params) -> np.ndarray:
    """Chen, Lu, Lü & Yu (2006) hyperchaotic Lü: x' = a (y - x) + w, y' = -x z + c y,
    z' = x y - b z, w' = x z + d w."""
    x, y, z, w = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    return _stack(p["a"] * (y - x) + w, -x * z + p["c"] * y, x * y - p["b"] * z,
                  x * z + p["d"] * w)


def lorenz84(s: np.ndarray, p: Params) -> np.ndarray:
    """Lorenz (1984) Hadley circulation: x' = -y^2 - z^2 - a x + a F,
    y' = x y - b x z - y + G, z' = b x y + x z - z."""
    x, y, z = _xyz(s)
    a, b = p["a"], p["b"]
    return _stack(-y * y - z * z - a * x + a * p["F"], x * y - b * x * z - y + p["G"],
                  b * x * y + x * z - z)


def rucklidge(s: np.ndarray, p: Params) -> np.ndarray:
    """Rucklidge (1992) double convection: x' = -k x + l y - y z, y' = x, z' = -z + y^2."""
    x, y, z = _xyz(s)
    return _stack(-p["k"] * x + p["l"] * y - y * z, x, -z + y * y)


def shimizu_morioka(s: np.ndarray, p: Params) -> np.ndarray:
    """Shimizu & Morioka (1980): x' = y, y' = x - l y - x z, z' = -a z + x^2."""
    x, y, z = _xyz(s)
    return _stack(y, x - p["l"] * y - x * z, -p["a"] * z + x * x)


def burke_shaw(s: np.ndarray, p: Params) -> np.ndarray:
    """Shaw (1981) (the Burke-Shaw system): x' = -u (x + y), y' = -y - u x z,
    z' = u x y + v."""
    x, y, z = _xyz(s)
    u = p["u"]
    return _stack(-u * (x + y), -y - u * x * z, u * x * y + p["v"])


def chen_lee(s: np.ndarray, p: Params) -> np.ndarray:
    """Chen & Lee (2004): x' = a x - y z, y' = b y + x z, z' = c z + x y / 3."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * x - y * z, p["b"] * y + x * z, p["c"] * z + x * y / 3.0)


def newton_leipnik(s: np.ndarray, p: Params) -> np.ndarray:
    """Leipnik & Newton (1981) rigid body: x' = -a x + y + 10 y z, y' = -x - 0.4 y + 5 x z,
    z' = b z - 5 x y."""
    x, y, z = _xyz(s)
    return _stack(-p["a"] * x + y + 10.0 * y * z, -x - 0.4 * y + 5.0 * x * z,
                  p["b"] * z - 5.0 * x * y)


def dadras(s: np.ndarray, p: Params) -> np.ndarray:
    """Dadras & Momeni (2009): x' = y - a x + b y z, y' = c y - x z + z, z' = d x y - e z."""
    x, y, z = _xyz(s)
    return _stack(y - p["a"] * x + p["b"] * y * z, p["c"] * y - x * z + z,
                  p["d"] * x * y - p["e"] * z)


def halvorsen(s: np.ndarray, p: Params) -> np.ndarray:
    """Halvorsen's cyclic system (Sprott 2010, Elegant Chaos): x' = -a x - 4 y - 4 z - y^2
    and its cyclic permutations."""
    x, y, z = _xyz(s)
    a = p["a"]
    return _stack(-a * x - 4 * y - 4 * z - y * y, -a * y - 4 * z - 4 * x - z * z,
                  -a * z - 4 * x - 4 * y - x * x)


def aizawa(s: np.ndarray, p: Params) -> np.ndarray:
    """Aizawa (1982) / Langford torus-breakdown flow: x' = (z - b) x - d y,
    y' = d x + (z - b) y, z' = c + a z - z^3/3 - (x^2 + y^2)(1 + e z) + f z x^3."""
    x, y, z = _xyz(s)
    zb = z - p["b"]
    return _stack(zb * x - p["d"] * y, p["d"] * x + zb * y,
                  p["c"] + p["a"] * z - z**3 / 3.0 - (x * x + y * y) * (1.0 + p["e"] * z)
                  + p["f"] * z * x**3)


def rabinovich_fabrikant(s: np.ndarray, p: Params) -> np.ndarray:
    """Rabinovich & Fabrikant (1979): x' = y (z - 1 + x^2) + g x,
    y' = x (3 z + 1 - x^2) + g y, z' = -2 z (a + x y)."""
    x, y, z = _xyz(s)
    g = p["g"]
    return _stack(y * (z - 1.0 + x * x) + g * x, x * (3.0 * z + 1.0 - x * x) + g * y,
                  -2.0 * z * (p["a"] + x * y))


def chua_cubic(s: np.ndarray, p: Params) -> np.ndarray:
    """Chua's circuit with a smooth cubic diode (Zhong 1994): x' = a (y - h(x)),
    y' = x - y + z, z' = -b y, h(x) = c x^3 + d x."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * (y - p["c"] * x**3 - p["d"] * x), x - y + z, -p["b"] * y)


def thomas(s: np.ndarray, p: Params) -> np.ndarray:
    """Thomas (1999) cyclically symmetric flow, any dimension n >= 3:
    x_i' = sin(x_{i+1}) - b x_i (indices cyclic); n > 3 is the labyrinth chaos of
    Sprott & Chlouverakis (2007)."""
    return np.sin(np.roll(s, -1, axis=-1)) - p["b"] * s


# --- jerk and other third-order flows -----------------------------------------------------

def genesio_tesi(s: np.ndarray, p: Params) -> np.ndarray:
    """Genesio & Tesi (1992): x' = y, y' = z, z' = -c x - b y - a z + x^2."""
    x, y, z = _xyz(s)
    return _stack(y, z, -p["c"] * x - p["b"] * y - p["a"] * z + x * x)


def arneodo(s: np.ndarray, p: Params) -> np.ndarray:
    """Arneodo, Coullet & Tresser (1981): x' = y, y' = z, z' = -a x - b y - c z + d x^3."""
    x, y, z = _xyz(s)
    return _stack(y, z, -p["a"] * x - p["b"] * y - p["c"] * z + p["d"] * x**3)


def moore_spiegel(s: np.ndarray, p: Params) -> np.ndarray:
    """Moore & Spiegel (1966) thermal convection: x' = y, y' = z,
    z' = -z - (t - r + r x^2) y - t x."""
    x, y, z = _xyz(s)
    return _stack(y, z, -z - (p["t"] - p["r"] + p["r"] * x * x) * y - p["t"] * x)


def duffing(s: np.ndarray, p: Params) -> np.ndarray:
    """Forced Duffing oscillator (Duffing 1918; chaos: Ueda 1979) made autonomous:
    x' = v, v' = -d v - a x - b x^3 + g u, with the forcing phase carried by a harmonic
    oscillator u' = -w q, q' = w u (u = cos(w t) from (1, 0))."""
    x, v, u, q = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    w = p["w"]
    return _stack(v, -p["d"] * v - p["a"] * x - p["b"] * x**3 + p["g"] * u, -w * q, w * u)


# --- Sprott (1994) simplest quadratic flows, cases B-S ------------------------------------
# Sprott, "Some simple chaotic flows", Phys. Rev. E 50, R647 (1994), table I. The constants
# of each case are named parameters (unit coefficients too where a case has no other), so
# the zoo can perturb them.

def sprott_b(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a y z, y' = x - y, z' = b - x y."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * y * z, x - y, p["b"] - x * y)


def sprott_c(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a y z, y' = x - y, z' = b - x^2."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * y * z, x - y, p["b"] - x * x)


def sprott_d(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -y, y' = x + z, z' = x z + a y^2."""
    x, y, z = _xyz(s)
    return _stack(-y, x + z, x * z + p["a"] * y * y)


def sprott_e(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = y z, y' = x^2 - y, z' = b - a x."""
    x, y, z = _xyz(s)
    return _stack(y * z, x * x - y, p["b"] - p["a"] * x)


def sprott_f(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = y + z, y' = -x + a y, z' = x^2 - z."""
    x, y, z = _xyz(s)
    return _stack(y + z, -x + p["a"] * y, x * x - z)


def sprott_g(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a x + z, y' = x z - y, z' = -x + y."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * x + z, x * z - y, -x + y)


def sprott_h(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -y + z^2, y' = x + a y, z' = x - z."""
    x, y, z = _xyz(s)
    return _stack(-y + z * z, x + p["a"] * y, x - z)


def sprott_i(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -a y, y' = x + z, z' = x + y^2 - z."""
    x, y, z = _xyz(s)
    return _stack(-p["a"] * y, x + z, x + y * y - z)


def sprott_j(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a z, y' = -a y + z, z' = -x + y + y^2."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * z, -p["a"] * y + z, -x + y + y * y)


def sprott_k(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = x y - z, y' = x - y, z' = x + a z."""
    x, y, z = _xyz(s)
    return _stack(x * y - z, x - y, x + p["a"] * z)


def sprott_l(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = y + a z, y' = b x^2 - y, z' = 1 - x."""
    x, y, z = _xyz(s)
    return _stack(y + p["a"] * z, p["b"] * x * x - y, 1.0 - x)


def sprott_m(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -z, y' = -x^2 - y, z' = a + a x + y."""
    x, y, z = _xyz(s)
    return _stack(-z, -x * x - y, p["a"] * (1.0 + x) + y)


def sprott_n(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -a y, y' = x + z^2, z' = 1 + y - a z."""
    x, y, z = _xyz(s)
    return _stack(-p["a"] * y, x + z * z, 1.0 + y - p["a"] * z)


def sprott_o(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = y, y' = x - z, z' = x + x z + a y."""
    x, y, z = _xyz(s)
    return _stack(y, x - z, x + x * z + p["a"] * y)


def sprott_p(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a y + z, y' = -x + y^2, z' = x + y."""
    x, y, z = _xyz(s)
    return _stack(p["a"] * y + z, -x + y * y, x + y)


def sprott_q(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -z, y' = x - y, z' = a x + y^2 + b z."""
    x, y, z = _xyz(s)
    return _stack(-z, x - y, p["a"] * x + y * y + p["b"] * z)


def sprott_r(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = a - y, y' = b + z, z' = x y - z."""
    x, y, z = _xyz(s)
    return _stack(p["a"] - y, p["b"] + z, x * y - z)


def sprott_s(s: np.ndarray, p: Params) -> np.ndarray:
    """x' = -x - a y, y' = x + z^2, z' = 1 + x."""
    x, y, z = _xyz(s)
    return _stack(-x - p["a"] * y, x + z * z, 1.0 + x)


# --- the library ------------------------------------------------------------------------------
# timescale: mean oscillation period of the fastest variable at the defaults (estimate_period,
# hysteresis crossings), or two Lyapunov times where shorter, rounded. steps_per_timescale: RK4
# steps per timescale that keep both one timescale's error against DOP853 (rtol 1e-12, from
# three points on the attractor) below ~2e-6 of the attractor's spread and every saved step of
# a default zoo run within zoo.LOCAL_TOLERANCE; the zoo refines the step further where a
# perturbed or coupled system needs it.

def _sys(name: str, rhs: VectorField, params: Params, x0: tuple[float, ...], timescale: float,
         citation: str, steps: int = 200) -> FlowSystem:
    return FlowSystem(name, rhs, params, x0, timescale, citation, steps)


_SPROTT = "Sprott (1994), Phys. Rev. E 50, R647, case "
_SPROTT_CASES: dict[str, tuple[Params, float, int]] = {
    # case: (params, timescale, steps_per_timescale)
    "b": ({"a": 1.0, "b": 1.0}, 8.5, 400), "c": ({"a": 1.0, "b": 1.0}, 6.8, 400),
    "d": ({"a": 3.0}, 6.9, 400), "e": ({"a": 4.0, "b": 1.0}, 6.3, 400),
    "f": ({"a": 0.5}, 11.2, 400), "g": ({"a": 0.4}, 8.7, 200), "h": ({"a": 0.5}, 9.2, 400),
    "i": ({"a": 0.2}, 10.9, 200), "j": ({"a": 2.0}, 5.1, 200), "k": ({"a": 0.3}, 7.1, 200),
    "l": ({"a": 3.9, "b": 0.9}, 3.4, 400), "m": ({"a": 1.7}, 5.4, 200),
    "n": ({"a": 2.0}, 5.3, 200), "o": ({"a": 2.7}, 4.9, 200), "p": ({"a": 2.7}, 8.4, 200),
    "q": ({"a": 3.1, "b": 0.5}, 4.9, 400), "r": ({"a": 0.9, "b": 0.4}, 7.0, 200),
    "s": ({"a": 4.0}, 3.6, 200),
}

LIBRARY: dict[str, FlowSystem] = {s.name: s for s in [
    _sys("rossler", rossler, {"a": 0.2, "b": 0.2, "c": 5.7}, (1.0, 1.0, 1.0), 5.9,
         "Rössler (1976), Phys. Lett. A 57, 397", 400),
    _sys("hyper_rossler", hyper_rossler, {"a": 0.25, "b": 3.0, "c": 0.5, "d": 0.05},
         (-10.0, -6.0, 0.0, 10.0), 7.4, "Rössler (1979), Phys. Lett. A 71, 155", 3200),
    _sys("chen", chen, {"a": 35.0, "b": 3.0, "c": 28.0}, (-10.0, 0.0, 37.0), 0.59,
         "Chen & Ueta (1999), Int. J. Bifurcation Chaos 9, 1465", 400),
    _sys("lu", lu, {"a": 36.0, "b": 3.0, "c": 20.0}, (1.0, 1.0, 1.0), 0.69,
         "Lü & Chen (2002), Int. J. Bifurcation Chaos 12, 659", 400),
    _sys("hyper_chen", hyper_chen, {"a": 35.0, "b": 3.0, "c": 12.0, "d": 7.0, "r": 0.5},
         (1.0, 1.0, 1.0, 1.0), 0.86,
         "Li, Tang & Chen (2005), Int. J. Bifurcation Chaos 15, 3367", 400),
    _sys("hyper_lu", hyper_lu, {"a": 36.0, "b": 3.0, "c": 20.0, "d": 1.0},
         (5.0, 8.0, -1.0, -3.0), 0.83, "Chen, Lu, Lü & Yu (2006), Physica A 364, 103", 400),
    _sys("lorenz84", lorenz84, {"a": 0.25, "b": 4.0, "F": 8.0, "G": 1.0}, (1.0, 0.0, 0.5), 1.5,
         "Lorenz (1984), Tellus A 36, 98"),
    _sys("rucklidge", rucklidge, {"k": 2.0, "l": 6.7}, (1.0, 0.0, 4.5), 4.6,
         "Rucklidge (1992), J. Fluid Mech. 237, 209"),
    _sys("shimizu_morioka", shimizu_morioka, {"l": 0.75, "a": 0.45}, (0.1, 0.0, 0.0), 10.3,
         "Shimizu & Morioka (1980), Phys. Lett. A 76, 201"),
    _sys("burke_shaw", burke_shaw, {"u": 10.0, "v": 4.272}, (0.6, 0.0, 0.0), 1.0,
         "Shaw (1981), Z. Naturforsch. 36a, 80"),
    _sys("chen_lee", chen_lee, {"a": 5.0, "b": -10.0, "c": -0.38}, (1.0, 1.0, 1.0), 2.7,
         "Chen & Lee (2004), Chaos Solitons Fractals 21, 957", 800),
    _sys("newton_leipnik", newton_leipnik, {"a": 0.4, "b": 0.175}, (0.349, 0.0, -0.16), 6.1,
         "Leipnik & Newton (1981), Phys. Lett. A 86, 63", 400),
    _sys("dadras", dadras, {"a": 3.0, "b": 2.7, "c": 1.7, "d": 2.0, "e": 9.0},
         (1.1, 2.1, -2.0), 4.0, "Dadras & Momeni (2009), Phys. Lett. A 373, 3637", 3200),
    _sys("halvorsen", halvorsen, {"a": 1.27}, (-5.0, 0.0, 0.0), 1.75,
         "Sprott (2010), Elegant Chaos, World Scientific (Halvorsen's system)", 800),
    _sys("aizawa", aizawa, {"a": 0.95, "b": 0.7, "c": 0.6, "d": 3.5, "e": 0.25, "f": 0.1},
         (0.1, 0.0, 0.0), 2.5, "Aizawa (1982), Prog. Theor. Phys. 68, 64; Langford (1984)"),
    _sys("rabinovich_fabrikant", rabinovich_fabrikant, {"a": 1.1, "g": 0.87},
         (-1.0, 0.0, 0.5), 2.7, "Rabinovich & Fabrikant (1979), Sov. Phys. JETP 50, 311; "
         "parameters of Danca & Chen (2004), Int. J. Bifurcation Chaos 14, 3409"),
    _sys("chua_cubic", chua_cubic, {"a": 10.0, "b": 16.0, "c": 1.0 / 16.0, "d": -1.0 / 6.0},
         (0.1, 0.0, 0.0), 2.4, "Zhong (1994), IEEE Trans. Circuits Syst. I 41, 934 (cubic "
         "Chua diode); double-scroll parameters checked chaotic here"),
    _sys("thomas", thomas, {"b": 0.18}, (0.1, 0.0, 0.0), 50.0,
         "Thomas (1999), Int. J. Bifurcation Chaos 9, 1889", 1600),
    _sys("labyrinth5", thomas, {"b": 0.18}, (0.1, 0.0, 0.0, 0.3, 0.5), 8.7,
         "Sprott & Chlouverakis (2007), Int. J. Bifurcation Chaos 17, 2097 (Thomas 1999 in "
         "5 dimensions)"),
    _sys("labyrinth6", thomas, {"b": 0.18}, (0.1, 0.0, 0.0, 0.3, 0.5, -0.2), 9.5,
         "Sprott & Chlouverakis (2007), Int. J. Bifurcation Chaos 17, 2097 (Thomas 1999 in "
         "6 dimensions)"),
    _sys("genesio_tesi", genesio_tesi, {"a": 0.44, "b": 1.1, "c": 1.0}, (0.1, 0.1, 0.1), 7.9,
         "Genesio & Tesi (1992), Automatica 28, 531", 400),
    _sys("arneodo", arneodo, {"a": -5.5, "b": 3.5, "c": 1.0, "d": -1.0}, (0.2, 0.2, 0.0), 3.8,
         "Arneodo, Coullet & Tresser (1981), Phys. Lett. A 79, 259"),
    _sys("moore_spiegel", moore_spiegel, {"t": 6.0, "r": 20.0}, (0.1, 0.0, 0.0), 2.8,
         "Moore & Spiegel (1966), Astrophys. J. 143, 871", 800),
    _sys("duffing_ueda", duffing, {"d": 0.05, "a": 0.0, "b": 1.0, "g": 7.5, "w": 1.0},
         (3.0, 0.0, 1.0, 0.0), 4.9, "Ueda (1979), J. Stat. Phys. 20, 181 (forced Duffing "
         "x'' + 0.05 x' + x^3 = 7.5 cos t)", 400),
    *[_sys(f"sprott_{c}", globals()[f"sprott_{c}"], p, (0.1, 0.1, 0.1), per, _SPROTT + c.upper(),
           spp) for c, (p, per, spp) in _SPROTT_CASES.items()],
]}

# Base systems used only for evaluation: never drawn into a zoo corpus, so zero-shot skill may
# be claimed on them (and on nothing else named in LIBRARY).
HELD_OUT: tuple[str, ...] = ("rossler", "hyper_rossler", "halvorsen", "lorenz84", "dadras")


def get_flow(name: str) -> FlowSystem:
    """The library system `name`, or ConfigError listing the valid names."""
    if name not in LIBRARY:
        raise ConfigError(f"unknown zoo system {name!r}; valid systems: {', '.join(LIBRARY)}")
    return LIBRARY[name]


def training_systems() -> list[FlowSystem]:
    """The library without the held-out systems: what a zoo corpus draws from."""
    return [s for name, s in LIBRARY.items() if name not in HELD_OUT]
