"""The CPU scoring reductions: popcount Gram, fixed-order channel statistics and the BatchNorm built on them."""
import pytest
import torch
from torch import nn

from spikesearch.core import kernels
from spikesearch.core.batchnorm import BatchNorm2d


@pytest.fixture(autouse=True)
def _library():
    if kernels.library() is None:
        pytest.skip("no C compiler: callers keep their torch paths")


@pytest.mark.parametrize("shape", [(7, 50), (5, 64), (9, 130), (13, 3, 5, 7), (8, 16, 28, 28)])
def test_spike_gram_counts_coincident_spikes(shape):
    """Row counts that are not a multiple of the four-row blocks and features that are not a multiple of
    64 bits both meet the matmul exactly; any non-zero value is a spike."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(*shape, generator=g) < 0.3).float()
    flat = x.flatten(1)
    assert torch.equal(kernels.spike_gram(x), flat @ flat.T)
    assert torch.equal(kernels.spike_gram(x * 0.5), flat @ flat.T)


def test_spike_gram_ignores_the_memory_format():
    x = (torch.rand(6, 16, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    cl = x.contiguous(memory_format=torch.channels_last)
    assert kernels.gram_usable(cl) and not kernels.gram_usable(x.transpose(2, 3))
    assert torch.equal(kernels.spike_gram(cl), x.flatten(1) @ x.flatten(1).T)


def _thread_runs(fn):
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(fn())
    torch.set_num_threads(2)
    return results


def test_channel_stats_are_exact_and_thread_independent():
    x = (torch.randn(32, 8, 20, 20, generator=torch.Generator().manual_seed(1)) * 3 + 2).contiguous(
        memory_format=torch.channels_last)
    one, two = _thread_runs(lambda: kernels.channel_stats(x))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(one[0], mean.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(one[1], var.float(), rtol=1e-6, atol=1e-6)


def test_batchnorm_fast_path_matches_torch_and_not_the_thread_count():
    """No-grad train mode on a channels-last CPU map: same outputs and running statistics as nn.BatchNorm2d
    to float rounding, and identical for one or two threads (torch's own channels-last batch norm is not)."""
    x = (torch.randn(64, 16, 14, 14, generator=torch.Generator().manual_seed(2)) * 2 - 1).contiguous(
        memory_format=torch.channels_last)

    def run(cls):
        torch.manual_seed(0)
        bn = cls(16)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
        with torch.no_grad():
            y = bn(x)
            y = bn(x)  # the running statistics move twice
        return y, bn.running_mean, bn.running_var, bn.num_batches_tracked

    ours, ref = run(BatchNorm2d), run(nn.BatchNorm2d)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    one, two = _thread_runs(lambda: run(BatchNorm2d))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
