"""JeffreysNPE trained and sampled on a CUDA device with a Gaussian prior (runs where CUDA is).

On 2026-12-02 bernoulli_glm at 10^4 failed on the H200 in ``build_posterior``: the MCMC
transform of a multivariate-normal prior was built on the CPU while the prior lived on the GPU.
"""

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_jeffreys.adapters.sbi import JeffreysNPE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("sample_with", ["proxy", "flow"])
def test_gaussian_prior_posterior_on_cuda(sample_with):
    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(3, device="cuda"), torch.eye(3, device="cuda"))
    theta = prior.sample((300,))
    x = theta + 0.1 * torch.randn_like(theta)
    inference = JeffreysNPE(prior, device="cuda", show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=2)
    posterior = inference.build_posterior(sample_with=sample_with)
    samples = posterior.sample((50,), x=x[:1], show_progress_bars=False)
    assert samples.shape == (50, 3) and samples.device.type == "cuda"
    assert torch.isfinite(posterior.log_prob(samples, x=x[:1])).all()
