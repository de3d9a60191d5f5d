"""The source article's MNIST example, as written there, timed: the reference of bench_speed.py.

It follows the article's code (torchvision `datasets.MNIST` + `ToTensor` + `Normalize`, `DataLoader`
batch 64 shuffled, test batch 1000, teacher MLP 784-512-256-10, student MLP 784-128-10, Adam 1e-3,
5 + 5 epochs, T = 3, alpha = 0.5, the teacher's forward on every student step under `no_grad`).
The only departures, none of which changes the work done: a fixed seed, `download=False` (the
files are already there; the article's `download=True` is a no-op then), epochs as arguments, and
the timings and accuracies written as JSON to `--result`.

    python benchmarks/reference_article.py --root DIR [--epochs 5] [--teacher-epochs 5] [--result out.json]
"""

from __future__ import annotations

import argparse
import json
import time

_STARTED = time.perf_counter()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402


class TeacherModel(nn.Module):
    def __init__(self):
        super(TeacherModel, self).__init__()
        self.fc1 = nn.Linear(28 * 28, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class StudentModel(nn.Module):
    def __init__(self):
        super(StudentModel, self).__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def train_teacher(model, train_loader, epochs=5, lr=0.001):
    optimizer = optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        total_loss = 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            output = model(images)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        print(f"Epoch [{epoch+1}/{epochs}], Loss: {total_loss / len(train_loader):.4f}", flush=True)


def distillation_loss(student_logits, teacher_logits, labels, T=3.0, alpha=0.5):
    soft_targets = F.softmax(teacher_logits / T, dim=1)
    soft_predictions = F.log_softmax(student_logits / T, dim=1)
    distillation_loss = F.kl_div(soft_predictions, soft_targets, reduction="batchmean") * (T ** 2)
    ce_loss = F.cross_entropy(student_logits, labels)
    return alpha * ce_loss + (1 - alpha) * distillation_loss


def train_student_with_distillation(student_model, teacher_model, train_loader, epochs=5, lr=0.001, T=3.0, alpha=0.5):
    optimizer = optim.Adam(student_model.parameters(), lr=lr)
    teacher_model.eval()
    for epoch in range(epochs):
        student_model.train()
        total_loss = 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            student_logits = student_model(images)
            with torch.no_grad():
                teacher_logits = teacher_model(images)
            loss = distillation_loss(student_logits, teacher_logits, labels, T=T, alpha=alpha)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        print(f"Epoch [{epoch+1}/{epochs}], Loss: {total_loss / len(train_loader):.4f}", flush=True)


def evaluate(model, test_loader):
    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for images, labels in test_loader:
            outputs = model(images)
            _, predicted = torch.max(outputs, 1)
            correct += (predicted == labels).sum().item()
            total += labels.size(0)
    accuracy = 100 * correct / total
    return accuracy


def parse_args(description: str) -> argparse.Namespace:
    """The arguments of this script."""
    return argument_parser(description).parse_args()


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments shared with `plain_inmemory.py`, which does the same work (and adds --device)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/*-ubyte")
    parser.add_argument("--epochs", type=int, default=5, help="student epochs (article: 5)")
    parser.add_argument("--teacher-epochs", type=int, default=5, help="teacher epochs (article: 5)")
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", help="write timings and accuracies here as JSON")
    return parser


def report(args: argparse.Namespace, teacher_acc: float, student_acc: float, train_images: int,
           test_images: int, marks: list[float], device: str = "cpu") -> None:
    """Print the result as JSON and write it to `--result`. `marks`: perf_counter() at the start,
    after the imports, the data, the teacher, the student and the evaluation; `device`: where the
    training ran (this script always on the CPU)."""
    started, imported, loaded, teacher_done, student_done, finished = marks
    result = {
        "teacher_acc": teacher_acc,
        "student_acc": student_acc,
        "train_images": train_images,
        "test_images": test_images,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "import_s": imported - started,
        "load_s": loaded - imported,
        "teacher_s": teacher_done - loaded,
        "student_s": student_done - teacher_done,
        "eval_s": finished - student_done,
        "in_process_s": finished - started,
    }
    print(json.dumps(result), flush=True)
    if args.result:
        with open(args.result, "w") as f:
            json.dump(result, f, indent=2)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.manual_seed(args.seed)
    imported = time.perf_counter()

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_dataset = datasets.MNIST(root=args.root, train=True, download=False, transform=transform)
    test_dataset = datasets.MNIST(root=args.root, train=False, download=False, transform=transform)
    train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=1000, shuffle=False)
    loaded = time.perf_counter()

    teacher_model = TeacherModel()
    train_teacher(teacher_model, train_loader, epochs=args.teacher_epochs)
    teacher_done = time.perf_counter()

    student_model = StudentModel()
    train_student_with_distillation(student_model, teacher_model, train_loader, epochs=args.epochs,
                                    T=args.temperature, alpha=args.alpha)
    student_done = time.perf_counter()

    teacher_acc = evaluate(teacher_model, test_loader)
    print(f"教师模型准确率: {teacher_acc:.2f}%")
    student_acc = evaluate(student_model, test_loader)
    print(f"知识蒸馏训练的学生模型准确率: {student_acc:.2f}%")
    finished = time.perf_counter()

    report(args, teacher_acc, student_acc, len(train_dataset), len(test_dataset),
           [_STARTED, imported, loaded, teacher_done, student_done, finished])


if __name__ == "__main__":
    main()
