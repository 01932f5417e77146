"""Debye thermodynamics: analytic limits, thermodynamic identities by autograd, float32 stability, DFPT diamond."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from cloud_core.debye import (
    GAS_CONSTANT,
    T3_COEFFICIENT,
    debye_cv,
    debye_einstein_thermo,
    debye_entropy,
    debye_free_energy,
    debye_internal_energy,
    debye_thermo,
    einstein_thermo,
    fit_debye_temperature,
)
from tests.conftest import shared_file

R = GAS_CONSTANT
THETAS = torch.logspace(1, math.log10(3000), 25)  # 10..3000 K
TEMPERATURES = torch.logspace(0, math.log10(3000), 40)  # 1..3000 K


def test_dulong_petit_limit():
    cv = debye_cv(torch.tensor([10.0, 50.0, 100.0]), torch.tensor(3000.0))
    assert torch.allclose(cv, torch.full_like(cv, 3 * R), rtol=1e-3)


def test_t_cubed_law_at_low_temperature():
    theta = torch.tensor([300.0, 1000.0, 3000.0], dtype=torch.float64)
    t = theta / 100  # x_D = 100, deep in the T^3 regime
    expected = T3_COEFFICIENT * (t / theta) ** 3
    assert torch.allclose(debye_cv(theta, t), expected, rtol=1e-10)


def test_zero_point_energy_and_low_temperature_entropy():
    theta = torch.tensor([100.0, 1000.0], dtype=torch.float64)
    u = debye_internal_energy(theta, torch.tensor(1e-3, dtype=torch.float64))
    assert torch.allclose(u, 9 / 8 * R * theta, rtol=1e-9)
    t = torch.tensor(1.0, dtype=torch.float64)  # T^3 regime: S = Cv / 3
    assert torch.allclose(debye_entropy(theta, t), debye_cv(theta, t) / 3, rtol=1e-9)


@pytest.mark.parametrize("theta,temperature", [(10.0, 3000.0), (300.0, 300.0), (2000.0, 50.0), (500.0, 10.0)])
def test_matches_direct_quadrature(theta, temperature):
    x_d = theta / temperature

    def integral(f):
        return quad(f, 0, min(x_d, 200), limit=500, epsabs=0, epsrel=1e-13)[0]

    cv = 9 * R * (temperature / theta) ** 3 * integral(lambda x: x**4 * np.exp(-x) / (-np.expm1(-x)) ** 2)
    u_thermal = 9 * R * temperature * (temperature / theta) ** 3 * integral(lambda x: x**3 / np.expm1(x))
    got = debye_thermo(torch.tensor(theta, dtype=torch.float64), torch.tensor(temperature, dtype=torch.float64))
    assert float(got["cv"]) == pytest.approx(cv, rel=1e-9)
    assert float(got["u"]) == pytest.approx(9 / 8 * R * theta + u_thermal, rel=1e-9)


def test_float32_finite_everywhere_in_the_stated_range():
    theta, t = torch.meshgrid(THETAS.float(), TEMPERATURES.float(), indexing="ij")
    for name, value in debye_thermo(theta, t).items():
        assert torch.isfinite(value).all(), name
    # and it agrees with float64 where the values are not vanishing
    exact = debye_thermo(theta.double(), t.double())
    approx = debye_thermo(theta, t)
    for name in ("cv", "u", "s"):
        big = exact[name].abs() > 1e-6
        rel = ((approx[name].double() - exact[name]).abs() / exact[name].abs())[big]
        assert rel.max() < 1e-4, name


def test_gradients_finite_in_float32_where_the_reference_integrand_overflows():
    theta = torch.tensor([3000.0, 1500.0], requires_grad=True)
    t = torch.tensor([10.0, 5.0])  # θ/T = 300: e^x overflows float32
    debye_cv(theta, t).sum().backward()
    assert torch.isfinite(theta.grad).all()


def test_du_dt_is_cv_and_df_dt_is_minus_s_by_autograd():
    theta, t = torch.meshgrid(THETAS.double(), TEMPERATURES.double(), indexing="ij")
    t = t.clone().requires_grad_(True)
    thermo = debye_thermo(theta, t)
    (du_dt,) = torch.autograd.grad(thermo["u"].sum(), t, retain_graph=True)
    (df_dt,) = torch.autograd.grad(thermo["f"].sum(), t)
    cv, s = thermo["cv"].detach(), thermo["s"].detach()
    relevant = cv > 1e-8 * 3 * R
    assert ((du_dt - cv).abs() / cv)[relevant].max() <= 1e-4
    relevant = s > 1e-8 * 3 * R
    assert ((df_dt + s).abs() / s)[relevant].max() <= 1e-4


def test_einstein_limits_identities_and_mixture():
    """Einstein: 3R at high T, zero-point 3/2 R θ_E, exponential freeze-out; dU/dT = Cv and dF/dT = -S hold for
    Einstein and for any Debye + Einstein mixture, in float64 and finite in float32 over the stated range."""
    theta_e = torch.tensor([100.0, 600.0], dtype=torch.float64)
    hot = einstein_thermo(theta_e, theta_e * 50)["cv"]  # x = 0.02: Cv = 3R (1 - x^2 / 12 + ...)
    assert torch.allclose(hot, torch.full_like(hot, 3 * R * (1 - 0.02**2 / 12)), rtol=1e-8)
    cold = einstein_thermo(theta_e, torch.tensor(1e-3, dtype=torch.float64))
    assert torch.allclose(cold["u"], 1.5 * R * theta_e, rtol=1e-12) and (cold["cv"] == 0).all()
    t = theta_e / 20  # x = 20: the exponential freeze-out
    expected = 3 * R * 400 * math.exp(-20) / (1 - math.exp(-20)) ** 2
    assert torch.allclose(einstein_thermo(theta_e, t)["cv"], torch.tensor(expected, dtype=torch.float64), rtol=1e-12)

    theta, t = torch.meshgrid(THETAS.double(), TEMPERATURES.double(), indexing="ij")
    t = t.clone().requires_grad_(True)
    for thermo in (einstein_thermo(theta, t), debye_einstein_thermo(theta, 0.7 * theta, 0.3, t)):
        (du_dt,) = torch.autograd.grad(thermo["u"].sum(), t, retain_graph=True)
        (df_dt,) = torch.autograd.grad(thermo["f"].sum(), t)
        cv, s = thermo["cv"].detach(), thermo["s"].detach()
        relevant = cv > 1e-8 * 3 * R
        assert ((du_dt - cv).abs() / cv)[relevant].max() <= 1e-4
        relevant = s > 1e-8 * 3 * R
        assert ((df_dt + s).abs() / s)[relevant].max() <= 1e-4
    mixed = debye_einstein_thermo(400.0, 300.0, 0.25, 200.0)
    debye, einstein = debye_thermo(400.0, 200.0), einstein_thermo(300.0, 200.0)
    assert float(mixed["s"]) == pytest.approx(0.75 * float(debye["s"]) + 0.25 * float(einstein["s"]), rel=1e-6)
    theta32, t32 = torch.meshgrid(THETAS.float(), TEMPERATURES.float(), indexing="ij")
    for name, value in einstein_thermo(theta32, t32).items():
        assert torch.isfinite(value).all(), name


def test_same_results_for_scalars_arrays_and_broadcasting():
    grid = debye_cv(torch.tensor([[200.0], [400.0]]), torch.tensor([100.0, 300.0, 600.0]))
    assert grid.shape == (2, 3)
    assert float(grid[1, 1]) == pytest.approx(float(debye_cv(400.0, 300.0)), rel=1e-6)
    theta, t = np.float64(400.0), np.float64(300.0)
    assert float(debye_free_energy(theta, t)) == pytest.approx(
        float(debye_internal_energy(theta, t) - t * debye_entropy(theta, t)), rel=1e-12
    )


def test_diamond_dfpt_curves():
    """Best-fit θ_D for diamond's DFPT Cv(T); the curve errors of the fitted Debye model stay small."""
    record = json.loads(shared_file("phonon_mp66_full.json").read_text())["thermo"]
    t = np.asarray(record["temperature"])  # K
    cv = np.asarray(record["C_v"])  # J/(K mol atoms): formula C, one atom per formula unit
    theta = fit_debye_temperature(t, cv)
    model = debye_thermo(torch.tensor(theta, dtype=torch.float64), torch.as_tensor(t))
    cv_mae = np.abs(model["cv"].numpy() - cv).mean()
    assert 1700 < theta < 2100, theta  # whole-curve fit; diamond's calorimetric θ_D is 1860 K at ~300 K
    assert cv_mae < 0.1, cv_mae  # J/(K mol) over 5..800 K on a curve rising to 19 (measured 0.051)
