"""The component-share factor (issue #11): a diagonal mixture sized by BIC, each row's expected share,
and how ``run_analysis`` multiplies it into the density before the weight rule."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.dataset import Dataset
from embeddings.errors import InvalidInput
from embeddings.latent import component_shares, ess_floor_weights, run_analysis
from embeddings.latent.components import bhattacharyya_coefficients

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARES = (0.70, 0.25, 0.05)


def _planted(rng: np.random.Generator, n: int = 3000, dim: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Three diagonal Gaussian blobs 8σ apart along different axes; returns rows and blob labels."""
    labels = rng.choice(len(SHARES), size=n, p=SHARES)
    centres = np.zeros((len(SHARES), dim))
    centres[1, 0] = centres[2, 1] = 8.0
    scales = rng.uniform(0.5, 1.5, size=(len(SHARES), dim))
    return centres[labels] + scales[labels] * rng.standard_normal((n, dim)), labels


def test_planted_blobs_are_found_with_their_shares(rng: np.random.Generator) -> None:
    X, labels = _planted(rng)
    got = component_shares(X, seed=0)
    assert got.n_components == 3
    true_share = np.bincount(labels) / labels.size
    np.testing.assert_allclose(np.sort(got.shares), np.sort(true_share), atol=0.005)
    # Each row's expected share is its own blob's share (responsibilities are near 0/1 at 8σ; a row
    # far out in its blob's tail may sit closer to another blob).
    assert np.mean(np.abs(np.exp(got.log_share) - true_share[labels]) <= 0.01) >= 0.998
    # Shift and one global scale change nothing.
    moved = component_shares(3.0 * X - 7.0, seed=0)
    np.testing.assert_allclose(moved.log_share, got.log_share, atol=1e-6)


def test_one_gaussian_keeps_one_component_and_changes_nothing(rng: np.random.Generator) -> None:
    X = rng.standard_normal((2000, 12)) * rng.uniform(0.2, 3.0, size=12)
    got = component_shares(X, seed=0)
    assert got.n_components == 1
    assert np.array_equal(got.log_share, np.zeros(2000))


def test_the_fit_sample_is_capped_and_every_row_is_scored(rng: np.random.Generator) -> None:
    X, labels = _planted(rng, n=4000)
    got = component_shares(X, seed=0, max_fit_samples=1000)
    assert got.n_components == 3 and got.log_share.shape == (4000,)
    assert np.mean(np.abs(np.exp(got.log_share) - (np.bincount(labels) / 4000)[labels]) <= 0.03) >= 0.998


def test_bhattacharyya_coefficients_match_numerical_integration(rng: np.random.Generator) -> None:
    means = rng.normal(0, 1.5, size=(3, 2))
    variances = rng.uniform(0.3, 2.0, size=(3, 2))
    grid = np.linspace(-15, 15, 1201)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    step = (grid[1] - grid[0]) ** 2

    def pdf(k: int) -> np.ndarray:
        z = ((xx - means[k, 0]) ** 2 / variances[k, 0] + (yy - means[k, 1]) ** 2 / variances[k, 1]) / 2
        return np.exp(-z) / (2 * np.pi * np.sqrt(variances[k].prod()))

    want = np.array([[np.sqrt(pdf(a) * pdf(b)).sum() * step for b in range(3)] for a in range(3)])
    got = bhattacharyya_coefficients(means, variances)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(np.diag(got), 1.0)


def test_a_split_mode_keeps_its_whole_share_and_a_separate_one_its_own(rng: np.random.Generator) -> None:
    # One non-Gaussian mode (a uniform square, 95%) that the mixture cuts into pieces, and a compact
    # 5% blob far away. Raw component shares would rank the square's rows by which piece they fell in.
    X = np.concatenate([rng.uniform(-1, 1, size=(2850, 2)), rng.normal(0, 0.05, size=(150, 2)) + [4.0, 0.0]])
    got = component_shares(X, seed=0)
    assert got.n_components >= 3
    s = np.exp(got.log_share)
    np.testing.assert_allclose(s[2850:], 0.05, atol=0.002)
    # Every row of the square counts as at least 3x as common as the blob (raw shares: pieces of 10%).
    assert s[:2850].min() > 3 * s[2850:].max()
    assert np.all(got.mode_shares >= got.shares - 1e-12) and got.mode_shares.max() <= 1 + 1e-12


@pytest.mark.parametrize(
    "X", [np.zeros((1, 3)), np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros(5)], ids=["one-row", "nan", "1-d"]
)
def test_bad_input_is_refused(X: np.ndarray) -> None:
    with pytest.raises(InvalidInput):
        component_shares(X)


def test_run_analysis_multiplies_the_share_into_the_density(rng: np.random.Generator) -> None:
    X, labels = _planted(rng, n=1500, dim=16)
    ds = Dataset(ids=np.arange(1500), vectors=X.astype(np.float32), groups={"blob": labels.astype(str)})
    kw = {"seed": 0, "vae_params": {"epochs": 5}, "latent_dim": 8}
    off = run_analysis(ds, component_share=0, **kw)
    on = run_analysis(ds, component_share=2.0, **kw)
    assert off.component_log_share is None and "components" not in off.params
    assert on.params["component_share"] == 2.0 and on.params["components"] >= 1
    # Same VAE and density; the weights are the ESS-floored rule on log p + 2 log s, by hand.
    np.testing.assert_allclose(on.density, off.density, rtol=1e-9)
    log_p = on.estimator._train_log_density()
    want, _ = ess_floor_weights(log_p + 2.0 * on.component_log_share, alpha=0.0, max_weight_ratio=50.0, min_ess=0.2)
    np.testing.assert_allclose(on.weights, want, rtol=1e-9)
    np.testing.assert_allclose(on.component_log_share, component_shares(on.latent, seed=0).log_share)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"component_share": -1.0}, "component_share must be in"),
        ({"component_share": 11.0}, "component_share must be in"),
        ({"component_share": float("nan")}, "component_share must be in"),
        ({"component_share": 1.0, "method": "histogram"}, "does not apply to the histogram"),
    ],
)
def test_bad_component_share_is_refused(kwargs: dict, message: str, rng: np.random.Generator) -> None:
    ds = Dataset(ids=np.arange(100), vectors=rng.standard_normal((100, 8)).astype(np.float32))
    with pytest.raises(InvalidInput, match=message):
        run_analysis(ds, **kwargs)
