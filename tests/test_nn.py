import math

import pytest
import torch

from emdm.nn import SinusoidalEmbedding, TimeMLP


def test_time_mlp_matches_paper_architecture():
    net = TimeMLP(5, emb_features=64, hidden_features=(256, 256, 256))
    # Linear(69, 256), 2 × Linear(256, 256), Linear(256, 5): about 151k parameters
    n = sum(p.numel() for p in net.parameters())
    assert n == (69 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 5 + 5) == 150789
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(linears) == 4 and len(norms) == 3
    assert all(not n.elementwise_affine for n in norms)
    for m in linears:  # inox init: U(±1/sqrt(fan_in)), zero biases
        bound = 1 / math.sqrt(m.in_features)
        assert m.weight.abs().max() <= bound
        assert m.weight.abs().max() > 0.9 * bound
        assert (m.bias == 0).all()
    out = net(torch.randn(7, 5), torch.randn(7, 64))
    assert out.shape == (7, 5)


def test_embedding_frequencies_and_shape():
    emb = SinusoidalEmbedding(6).double()
    c = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    f = torch.tensor([1.0, 1e-2, 1e-4], dtype=torch.float64)  # 10^(-4 j / 2), j = 0, 1, 2
    expected = torch.cat([torch.sin(c[:, None] * f), torch.cos(c[:, None] * f)], dim=-1)
    torch.testing.assert_close(emb(c), expected)


@pytest.mark.parametrize("features", [2, 5, 0])
def test_embedding_rejects_bad_features(features):
    with pytest.raises(ValueError, match="even integer >= 4"):
        SinusoidalEmbedding(features)
