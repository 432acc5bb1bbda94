"""channel_shuffle against its definition out[i*g + k] = in[k*m + i], in every execution mode."""

import pytest
import torch

from shufflenet import channel_shuffle


def shuffle_by_definition(x: torch.Tensor, groups: int) -> torch.Tensor:
    channels = x.shape[1]
    m = channels // groups
    out = torch.empty_like(x)
    for i in range(m):
        for k in range(groups):
            out[:, i * groups + k] = x[:, k * m + i]
    return out


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels,groups", [(12, 3), (16, 2), (24, 8), (58, 2), (10, 1)])
def test_matches_definition(batch, channels, groups):
    x = torch.randn(batch, channels, 5, 7)
    torch.testing.assert_close(channel_shuffle(x, groups), shuffle_by_definition(x, groups), rtol=0, atol=0)


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "torchscript"])
def test_channels_last_stays_channels_last(scripted):
    shuffle = torch.jit.script(channel_shuffle) if scripted else channel_shuffle
    x = torch.randn(2, 24, 6, 5).to(memory_format=torch.channels_last)
    out = shuffle(x, 3)
    torch.testing.assert_close(out, shuffle_by_definition(x.contiguous(), 3), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_is_a_permutation_inverted_by_the_transposed_shuffle():
    # With m = C/g, shuffling by g then by m restores the input: the two are inverse permutations.
    x = torch.arange(24.0).reshape(1, 24, 1, 1)
    shuffled = channel_shuffle(x, 3)
    assert sorted(shuffled.flatten().tolist()) == x.flatten().tolist()
    assert not torch.equal(shuffled, x)
    torch.testing.assert_close(channel_shuffle(shuffled, 8), x, rtol=0, atol=0)


def test_autograd():
    x = torch.randn(2, 6, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, 3), (x,))


def test_torchscript():
    scripted = torch.jit.script(channel_shuffle)
    x = torch.randn(2, 12, 4, 4)
    torch.testing.assert_close(scripted(x, 4), channel_shuffle(x, 4), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_torch_compile_fullgraph(layout):
    compiled = torch.compile(channel_shuffle, fullgraph=True, backend="aot_eager", dynamic=True)
    for batch in (1, 5):
        x = torch.randn(batch, 12, 4, 4).to(memory_format=layout)
        torch.testing.assert_close(compiled(x, 3), shuffle_by_definition(x.contiguous(), 3), rtol=0, atol=0)


def test_autograd_channels_last():
    x = torch.randn(2, 6, 3, 3, dtype=torch.double).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, 3), (x,))


@pytest.mark.parametrize("groups", [3, 0, -2])
def test_bad_groups_error(groups):
    with pytest.raises(ValueError, match=f"10 channels cannot be split into {groups} groups"):
        channel_shuffle(torch.randn(1, 10, 2, 2), groups)
