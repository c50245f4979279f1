"""The subject fuser against its formula, written out by hand."""

import torch
import torch.nn.functional as F

from facediffuser.models import SubjectFuser


def test_fuse_matches_the_reference_formula():
    torch.manual_seed(0)
    fuser = SubjectFuser(embed_dim=6)
    for p in fuser.parameters():  # move off the default init so LayerNorm affine terms matter
        p.data.normal_()
    t, o = torch.randn(3, 6), torch.randn(3, 6)

    def mlp(m, x, residual):
        h = F.layer_norm(x, x.shape[-1:], m.layernorm.weight, m.layernorm.bias)
        h = F.linear(F.gelu(F.linear(h, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
        return h + x if residual else h

    h = mlp(fuser.mlp1, torch.cat([t, o], -1), residual=False) + t
    h = mlp(fuser.mlp2, h, residual=True)
    expected = F.layer_norm(h, (6,), fuser.layer_norm.weight, fuser.layer_norm.bias)
    torch.testing.assert_close(fuser.fuse(t, o), expected)


def test_only_marked_tokens_change():
    fuser = SubjectFuser(embed_dim=4)
    text = torch.randn(2, 5, 4)
    subjects = torch.randn(2, 4)
    positions = torch.tensor([[0, 1], [1, 3]])
    out = fuser(text, subjects, positions)
    changed = (out != text).any(-1)
    assert changed.tolist() == [[False, True, False, False, False], [False, False, False, True, False]]
    torch.testing.assert_close(out[1, 3], fuser.fuse(text[1, 3][None], subjects[1][None])[0])


def test_parameter_names_match_the_release():
    names = set(SubjectFuser(embed_dim=4).state_dict())
    for mlp in ("mlp1", "mlp2"):
        for layer in ("layernorm", "fc1", "fc2"):
            assert {f"{mlp}.{layer}.weight", f"{mlp}.{layer}.bias"} <= names
    assert {"layer_norm.weight", "layer_norm.bias"} <= names
    assert SubjectFuser(embed_dim=768).mlp1.fc1.weight.shape == (768, 1536)
