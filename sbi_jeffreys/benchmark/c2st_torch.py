r"""sbibm's C2ST classifier, many tests at once, in torch.

``sbibm.metrics.c2st`` z-scores both samples with the first one's statistics, then reports the
5-fold cross-validated accuracy of scikit-learn's ``MLPClassifier`` (ReLU, two hidden layers
of ``10 * dim`` units, Adam at 1e-3, mini-batches of 200, L2 penalty 1e-4, Glorot-uniform
initialisation, stopping once the epoch's training loss has not improved by 1e-4 for more than
10 epochs). One such test is a few hundred epochs of tiny matrix products: 18-104 s on a core
for 2-5-D tasks, minutes for 10-D ones, so scoring a benchmark grid would outlast its trainings.

:func:`c2st_batched` trains the ``P x n_folds`` classifiers of ``P`` tests as one batched model
(``torch.bmm`` over a leading axis), each with its own data, fold, initialisation, shuffling
and stopping time; on a GPU all of a sweep cell's tests cost about one. Once half of the
batch has stopped, the stopped classifiers leave it, so that a slow one does not cost the whole
batch for hundreds of epochs (on a CPU core a 10-D cell's 100 classifiers ran 4 s an epoch, and
one of them was still improving after 600 epochs). The architecture,
z-scoring, folds, loss, optimizer and stopping rule are sklearn's; its random streams are not
reproduced, so a score differs from sbibm's by the classifier's own seed-to-seed spread
(measured in ``benchmarks/c2st_agreement.py``).

References:
    Lopez-Paz & Oquab, *Revisiting classifier two-sample tests*, ICLR 2017.
    Lueckmann et al., *Benchmarking simulation-based inference*, AISTATS 2021 (sbibm).

>>> X, Y = torch.randn(500, 2), torch.randn(500, 2) + 3.0
>>> c2st_batched([(X, Y)])[0] > 0.95
True
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["c2st_batched"]


def _folds(n: int, n_folds: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled K-fold test indices, sized as sklearn's ``KFold`` (the first ``n % k`` folds get one more)."""
    perm = torch.randperm(n, generator=generator)
    sizes = [n // n_folds + (1 if i < n % n_folds else 0) for i in range(n_folds)]
    return list(perm.split(sizes))


def _glorot(p: int, fan_in: int, fan_out: int, generator: torch.Generator, bias: bool = False) -> Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # sklearn's factor 6 for ReLU layers
    shape = (p, fan_out) if bias else (p, fan_in, fan_out)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def c2st_batched(
    pairs: Sequence[tuple[Tensor, Tensor]],
    seed: int = 1,
    n_folds: int = 5,
    device: str | torch.device = "cpu",
    max_epochs: int = 10_000,
    batch_size: int = 200,
    alpha: float = 1e-4,
    lr: float = 1e-3,
    tol: float = 1e-4,
    n_iter_no_change: int = 10,
) -> list[float]:
    r"""The C2ST accuracy of each pair ``(X, Y)``, as ``sbibm.metrics.c2st`` defines it.

    All pairs must have the same sample counts and dimension (a sweep cell's observations do);
    group other pairs by shape and call once per group.

    Args:
        pairs: ``(X (n, d), Y (m, d))`` samples; X is the reference whose statistics z-score both.
        seed: seeds the folds, initialisations and shuffling (sbibm's default is 1).
        n_folds: cross-validation folds.
        device: where the classifiers train (a GPU batches them best).
        max_epochs, batch_size, alpha, lr, tol, n_iter_no_change: sklearn's ``MLPClassifier``
            settings as sbibm uses them (``max_iter=10000``, the rest defaults).

    Returns:
        One mean cross-validated accuracy per pair.
    """
    if not pairs:
        return []
    shapes = {(tuple(x.shape), tuple(y.shape)) for x, y in pairs}
    if len(shapes) != 1:
        raise ValueError(f"c2st_batched needs pairs of one shape, got {sorted(shapes)}; group them by shape.")
    (nx, d), (ny, dy) = next(iter(shapes))
    if d != dy or nx < n_folds or ny < 1:
        raise ValueError(f"X {nx, d} and Y {ny, dy}: need the same dimension and at least {n_folds} samples.")
    gen = torch.Generator().manual_seed(seed)
    data, labels = [], torch.cat([torch.zeros(nx), torch.ones(ny)]).double()
    for x, y in pairs:
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise ValueError("C2ST samples contain NaN or inf values.")
        mean, std = x.mean(0), x.std(0)
        data.append((torch.cat([x, y]) - mean) / std)
    n = nx + ny
    folds = _folds(n, n_folds, gen)  # one split shared by every pair, as sbibm's fixed seed gives
    train_idx = [torch.cat([f for j, f in enumerate(folds) if j != k]) for k in range(n_folds)]
    # problems: pair-major, fold-minor; train/test sets differ in size across folds by at most one
    p = len(pairs) * n_folds
    h = 10 * d
    params = [
        _glorot(p, d, h, gen),
        _glorot(p, d, h, gen, bias=True),
        _glorot(p, h, h, gen),
        _glorot(p, h, h, gen, bias=True),
        _glorot(p, h, 1, gen),
        _glorot(p, h, 1, gen, bias=True),
    ]
    dev = torch.device(device)
    params = [w.float().to(dev).requires_grad_() for w in params]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    xs = torch.stack(data).float().to(dev)  # (P0, n, d)
    labels = labels.float().to(dev)
    n_train = max(len(t) for t in train_idx)
    # pad each fold's training indices to one length by repeating its first ones; padded rows get
    # weight 0, so every problem sees exactly its own training set
    tr_idx = torch.stack([torch.cat([t, t[: n_train - len(t)]]) for t in train_idx]).to(dev)  # (K, n_train)
    tr_len = torch.tensor([len(t) for t in train_idx], device=dev)
    pair_of = torch.arange(len(pairs), device=dev).repeat_interleave(n_folds)
    fold_of = torch.arange(n_folds, device=dev).repeat(len(pairs))

    def forward(xb: Tensor, weights: list[Tensor]) -> Tensor:
        w1, b1, w2, b2, w3, b3 = weights
        a = torch.relu(torch.baddbmm(b1.unsqueeze(1), xb, w1))
        a = torch.relu(torch.baddbmm(b2.unsqueeze(1), a, w2))
        return torch.baddbmm(b3.unsqueeze(1), a, w3).squeeze(-1)

    active = torch.ones(p, dtype=torch.bool, device=dev)
    best = torch.full((p,), math.inf, device=dev)
    stale = torch.zeros(p, dtype=torch.long, device=dev)
    torch_gen = torch.Generator(device=dev).manual_seed(seed)
    final = [w.detach().clone() for w in params]  # every problem's weights once it stopped
    ids = torch.arange(p, device=dev)  # the problems still in the batch, and their data:
    pair_in, fold_in = pair_of, fold_of
    for _ in range(max_epochs):
        # each problem shuffles its own training set every epoch (sklearn's shuffle=True); drawn
        # for all p, so that a problem's stream does not depend on which others have stopped
        order = torch.argsort(torch.rand(p, n_train, device=dev, generator=torch_gen)[ids], dim=1)
        epoch_loss = torch.zeros(len(ids), device=dev)
        rows = tr_idx[fold_in[:, None], order]  # (P, n_train): this epoch's order, gathered once
        x_ep, y_ep = xs[pair_in[:, None], rows], labels[rows]
        real_ep = (order < tr_len[fold_in, None]).float()  # padding positions do not count
        for start in range(0, n_train, batch_size):
            xb, yb = x_ep[:, start : start + batch_size], y_ep[:, start : start + batch_size]
            real = real_ep[:, start : start + batch_size]
            logits = forward(xb, params)
            count = real.sum(1).clamp_min(1)
            nll = (torch.nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="none") * real).sum(
                1
            ) / count
            l2 = 0.5 * alpha * sum(w.pow(2).sum((1, 2)) for w in params[::2]) / count
            loss = nll + l2
            opt.zero_grad(set_to_none=True)
            (loss * active).sum().backward()
            opt.step()
            epoch_loss += loss.detach() * count
        epoch_loss /= tr_len[fold_in].float()
        # sklearn: count epochs whose loss is not below best - tol; stop after more than n of them
        improved = epoch_loss < best - tol
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        best = torch.minimum(best, epoch_loss)
        active &= stale <= n_iter_no_change
        if not active.any():
            break
        if 2 * int(active.sum()) <= len(ids):
            # most have stopped: keep their weights and train only the rest (a single slow
            # problem would otherwise cost the whole batch for hundreds of epochs on a CPU)
            keep = active.nonzero().squeeze(1)
            params, opt = _compact(params, opt, final, ids, keep)
            ids, best, stale, pair_in, fold_in = ids[keep], best[keep], stale[keep], pair_in[keep], fold_in[keep]
            active = active[keep]
        # frozen problems: Adam would keep moving them on stale moments; zero their state instead
        if not active.all():
            with torch.no_grad():
                for w in params:
                    state = opt.state[w]
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key][~active] = 0.0
    with torch.no_grad():
        for w_final, w in zip(final, params):
            w_final[ids] = w.detach()
        n_test = max(len(f) for f in folds)
        te_idx = torch.stack([torch.cat([f, f[: n_test - len(f)]]) for f in folds]).to(dev)
        te_real = torch.arange(n_test, device=dev)[None] < torch.tensor([len(f) for f in folds], device=dev)[:, None]
        rows, real = te_idx[fold_of], te_real[fold_of].float()
        correct = ((forward(xs[pair_of[:, None], rows], final) > 0).float() == labels[rows]).float()
        acc = (correct * real).sum(1) / real.sum(1)
    return acc.reshape(len(pairs), n_folds).mean(1).tolist()


def _compact(
    params: list[Tensor], opt: torch.optim.Adam, final: list[Tensor], ids: Tensor, keep: Tensor
) -> tuple[list[Tensor], torch.optim.Adam]:
    """Store the batch's weights in ``final`` (rows ``ids``) and return the rows ``keep`` (the
    problems still training) with an Adam optimizer whose moments and step count continue theirs."""
    new_params, states = [], []
    with torch.no_grad():
        for w_final, w in zip(final, params):
            w_final[ids] = w.detach()
            new_params.append(w.detach()[keep].clone().requires_grad_())
            states.append({k: (v[keep].clone() if k.startswith("exp_avg") else v) for k, v in opt.state[w].items()})
    new_opt = torch.optim.Adam(new_params, **{k: opt.defaults[k] for k in ("lr", "betas", "eps")})
    for w, state in zip(new_params, states):
        new_opt.state[w] = state
    return new_params, new_opt
