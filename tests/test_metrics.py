"Metric functions against hand-computed answers."
import numpy as np
import pytest
import torch

from sdlms.core import SdlmsError
from sdlms.metrics import CovAccumulator, LayerStats, participation_ratio, topk_mass


def test_pr_of_known_covariances():
    assert participation_ratio(np.eye(7)) == pytest.approx(7.0)
    assert participation_ratio(np.diag([4.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert participation_ratio(np.diag([2.0, 1.0, 1.0])) == pytest.approx(16 / 6)   # (2+1+1)^2 / (4+1+1)
    C = np.array([[2.0, 1.0], [1.0, 2.0]])                                            # eigenvalues 3 and 1
    assert participation_ratio(C) == pytest.approx(16 / 10)


def test_streaming_covariance_matches_numpy_in_any_chunking():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 5, generator=g) * torch.tensor([5.0, 1, 1, 0.1, 0.1]) + 50
    ref = np.cov(X.double().numpy(), rowvar=False)
    for chunk in (1, 7, 500):
        acc = CovAccumulator(5)
        for part in X.split(chunk): acc.update(part)
        np.testing.assert_allclose(acc.cov(), ref, rtol=1e-4, atol=1e-4)


def test_fractions_mass_and_rates_by_hand():
    # 3 tasks x 2 tokens, 4 units
    a = torch.tensor([[1.0, 0.0, -1.0, 2.0],    # task 0
                      [1.0, 1.0, -1.0, -2.0],   # task 0
                      [-1.0, -1.0, -1.0, -1.0], # task 1
                      [-1.0, -1.0, -1.0, 4.0],  # task 1
                      [3.0, 1.0, 0.0, 0.0],     # task 2
                      [0.5, 0.5, 0.5, 0.5]])    # task 2
    t = torch.tensor([0, 0, 1, 1, 2, 2])
    st = LayerStats(4, 3, topk_fracs=(0.25, 0.5))
    st.update(a, t, torch.ones(6, dtype=torch.bool))
    r = st.result()
    assert r["frac_active"] == pytest.approx(11 / 24)       # 0.0 is not active
    np.testing.assert_allclose(r["rates_KD"], [[1.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.5], [1.0, 1.0, 0.5, 0.5]])
    np.testing.assert_array_equal(r["tokens_K"], [2, 2, 2])
    top1 = np.mean([2 / 4, 2 / 5, 1 / 4, 4 / 7, 3 / 4, 0.5 / 2])
    top2 = np.mean([3 / 4, 3 / 5, 2 / 4, 5 / 7, 4 / 4, 1 / 2])
    assert r["top25_mass"] == pytest.approx(top1) and r["top50_mass"] == pytest.approx(top2)
    assert r["pr"] == pytest.approx(participation_ratio(np.cov(a.double().numpy(), rowvar=False)))


def test_topk_mass_of_uniform_is_the_fraction():
    assert torch.allclose(topk_mass(torch.ones(3, 10), [0.1, 0.5]), torch.tensor([[0.1, 0.5]] * 3))


def test_nan_activations_raise_a_clear_error():
    st = LayerStats(2, 1)
    with pytest.raises(SdlmsError, match="non-finite activations"):
        st.update(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
