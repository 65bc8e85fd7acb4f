"""Time of one meta-iteration relative to one plain training step on the same images.

    python benchmarks/meta_step.py [--threads 1] [--crop 128] [--tasks 4] [--per-set 10] [--inner-steps 1]

Same model (metaiqa_resnet18 from scratch, MSCN front end, channels_last), same images
(tasks x (support + query) random 128x128 crops), same loss (MSE + ranking hinge). The
plain step is one forward/backward of all images pooled + Adam (the `supervised` baseline
of `metaiqa meta-train`); a meta-iteration is what `train_step` of the trainer does per
algorithm. One warm-up, then one timed run of each (as the issue asks: a ratio, one run); the
plain step is re-timed around each meta-iteration and the ratio uses the mean of the two.
"""

import argparse
import copy
import time

import torch

from metaiqa.meta import bilevel
from metaiqa.meta.batchnorm import use_batch_renorm
from metaiqa.meta.losses import Target, make_loss
from metaiqa.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="1 by default: on a shared 2-core machine, 2 OpenMP threads spin and distort small-batch timings")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--per-set", type=int, default=10, help="images per support and per query set")
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--inner-optimizer", default="sgd")
    ap.add_argument("--algorithms", default="fomaml,reptile,maml")
    ap.add_argument("--batchnorm", choices=["auto", "batch", "renorm"], default="auto",
                    help="as train.batchnorm: auto = Batch Renorm for the meta-algorithms, plain BN for the plain step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain_model = create_model("metaiqa_resnet18").train().to(memory_format=torch.channels_last)
    meta_model = copy.deepcopy(plain_model)
    if args.batchnorm in ("auto", "renorm"):
        use_batch_renorm(meta_model)
    if args.batchnorm == "renorm":
        use_batch_renorm(plain_model)
    model = plain_model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = make_loss(1.0)
    g = torch.Generator().manual_seed(0)

    def batch():
        x = torch.rand(args.per_set, 3, args.crop, args.crop, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.rand(args.per_set, generator=g)
        return x, Target(y, torch.arange(args.per_set) // 5)

    tasks = [(batch(), batch()) for _ in range(args.tasks)]
    pooled_x = torch.cat([x for s, q in tasks for x in (s[0], q[0])])
    pooled_t = Target(torch.cat([t.y for s, q in tasks for t in (s[1], q[1])]),
                      torch.cat([t.content + 100 * i for i, (s, q) in enumerate(tasks) for t in (s[1], q[1])]))

    def apply(grads):
        for (_, p), gr in zip(model.named_parameters(), grads.values(), strict=True):
            p.grad = gr
        opt.step()
        opt.zero_grad(set_to_none=True)

    def plain():
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        apply(bilevel.supervised_grads(model, params, buffers, (pooled_x, pooled_t), loss_fn=loss_fn).grads)

    def meta(name):
        fn = bilevel.META_ALGORITHMS[name]

        def run():
            params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
            total = None
            for support, query in tasks:
                r = fn(meta_model, params, buffers, support, query, steps=args.inner_steps, lr=0.01,
                       optimizer=args.inner_optimizer, loss_fn=loss_fn)
                total = r.grads if total is None else {k: total[k] + r.grads[k] for k in total}
            apply({k: v / len(tasks) for k, v in total.items()})

        return run

    def timed(fn):
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    n_img = pooled_x.shape[0]
    print(f"ResNet-18 {args.crop}x{args.crop}, {args.tasks} tasks x ({args.per_set} support + {args.per_set} query) "
          f"= {n_img} images, {args.inner_steps} inner {args.inner_optimizer} step(s), {args.threads} thread(s), "
          f"batchnorm={args.batchnorm}")
    # Plain steps are timed right before and after each meta-iteration, and the ratio taken
    # against their mean, so a load change on a shared machine biases the ratio less.
    prev = timed(plain)
    print(f"{'plain step':>12}: {prev:7.2f} s  ({n_img / prev:5.1f} img/s)")
    for name in args.algorithms.split(","):
        t = timed(meta(name))
        after = timed(plain)
        print(f"{name:>12}: {t:7.2f} s  ratio {t / ((prev + after) / 2):5.2f}   (plain steps around it: "
              f"{prev:.2f} s, {after:.2f} s)")
        prev = after

if __name__ == "__main__":
    main()
