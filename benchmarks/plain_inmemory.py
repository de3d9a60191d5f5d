"""The article's work done the fast way in plain PyTorch: the lower bound of bench_speed.py.

Same models, loss, optimiser (Adam 1e-3), batch size (64), epochs (5 + 5) and data files as
`reference_article.py` (its classes are imported, not copied), but with what kdexp does to be fast
and nothing else: the images as one in-memory tensor batched by shuffled index, fused Adam, the
teacher's logits computed once instead of on every student step, no per-step `.item()`. No
tracking, no config, no checkpoints, no model export: what remains is the training itself, so
kdexp cannot be faster than this on the same machine.

`--device cuda` moves the tensors and models to the GPU, as `trainer.device=cuda` does in kdexp
(the shuffled order is still drawn on the CPU generator, as kdexp draws it, then moved), and
synchronises the GPU before reading each phase's clock. A device this machine lacks is refused in
one line, exit code 2, before any work.

    python benchmarks/plain_inmemory.py --root DIR [--epochs 5] [--teacher-epochs 5] [--device cpu|cuda]
                                        [--result out.json]
"""

from __future__ import annotations

import sys
import time

_STARTED = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision import datasets  # noqa: E402

from reference_article import StudentModel, TeacherModel, argument_parser, distillation_loss, report  # noqa: E402

MEAN, STD = 0.1307, 0.3081  # the article's Normalize


def parse_args():
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the tensors and models live")
    return parser.parse_args()


def device_or_exit(name: str) -> torch.device:
    """`--device` → a torch device; one this machine lacks stops here in one line, exit code 2
    (as kdexp refuses `trainer.device=cuda` without CUDA)."""
    here = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if name not in here:
        print(f"plain_inmemory.py: error: --device {name} is not available on this machine; "
              f"available here: {', '.join(here)}", file=sys.stderr)
        raise SystemExit(2)
    return torch.device(name)


def clock(device: torch.device) -> float:
    """perf_counter() once the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def in_memory(root: str, train: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as normalised float images (N, 1, 28, 28) and labels on `device`, read once."""
    split = datasets.MNIST(root=root, train=train, download=False)
    x = split.data.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return x.to(device), split.targets.to(device)


def fit(model, x, y, epochs: int, generator: torch.Generator, loss_fn) -> list[float]:
    """Adam 1e-3 at batch 64 over shuffled indices; returns each epoch's mean loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, fused=True)
    model.train()
    means = []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(x.device)  # a no-op on the CPU
        total = torch.zeros((), device=x.device)
        for start in range(0, len(y), 64):
            idx = order[start:start + 64]
            loss = loss_fn(model(x.index_select(0, idx)), y.index_select(0, idx), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        means.append(total.item() / len(y))
        print(f"Epoch [{len(means)}/{epochs}], Loss: {means[-1]:.4f}", flush=True)
    return means


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits_of(model, x).argmax(1) == y).sum().item() / len(y)


def main() -> None:
    args = parse_args()
    device = device_or_exit(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)  # on the CPU, as kdexp's
    imported = time.perf_counter()

    train_x, train_y = in_memory(args.root, True, device)
    test_x, test_y = in_memory(args.root, False, device)
    loaded = clock(device)

    teacher = TeacherModel().to(device)
    fit(teacher, train_x, train_y, args.teacher_epochs, generator,
        lambda logits, labels, idx: F.cross_entropy(logits, labels))
    teacher_done = clock(device)

    cached = logits_of(teacher, train_x)  # once: the student sees the same unaugmented images
    student = StudentModel().to(device)
    fit(student, train_x, train_y, args.epochs, generator,
        lambda logits, labels, idx: distillation_loss(logits, cached.index_select(0, idx), labels,
                                                      T=args.temperature, alpha=args.alpha))
    student_done = clock(device)

    teacher_acc, student_acc = accuracy(teacher, test_x, test_y), accuracy(student, test_x, test_y)
    finished = clock(device)
    print(f"teacher {teacher_acc:.2f} %, student {student_acc:.2f} %")
    report(args, teacher_acc, student_acc, len(train_y), len(test_y),
           [_STARTED, imported, loaded, teacher_done, student_done, finished], device=str(device))


if __name__ == "__main__":
    main()
