"""Knowledge distillation: the loss against its formula, the teachers' re-normalisation, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torchvision.transforms import v2

from helpers import assert_same_weights, cli, final_weights, randomised
from shufflenet.data.preprocess import Preprocessing
from shufflenet.engine.config import load_config
from shufflenet.engine.distill import DistillationLoss, Teacher
from shufflenet.errors import UserError


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_the_loss_mixes_the_label_loss_with_the_kl_to_the_teachers_average_at_temperature() -> None:
    torch.manual_seed(0)
    student, first, second = torch.randn(3, 5, 10).unbind()
    label_loss, alpha, t = torch.tensor(1.7), 0.7, 3.0
    loss = DistillationLoss([FixedLogits(first), FixedLogits(second)], alpha, t)(student, torch.zeros(5, 3, 8, 8), label_loss)

    p = ((first / t).softmax(1) + (second / t).softmax(1)) / 2  # the ensemble's softened prediction
    q = (student / t).softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert loss.item() == pytest.approx((1 - alpha) * 1.7 + alpha * t * t * kl.item(), rel=1e-5)
    same = DistillationLoss([FixedLogits(student)], 1.0, t)(student, torch.zeros(5, 3, 8, 8), label_loss)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # a student that predicts as its teacher has nothing to learn


def test_a_teacher_reads_the_students_input_in_its_own_normalisation() -> None:
    """An ImageNet-normalised RGB teacher under a CIFAR-normalised BGR student: its output on the
    student's input is its output on its own preprocessing of the same image."""
    model = randomised("shufflenet_v2_x0_5", size=32)
    student = Preprocessing(crop_size=32, resize_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), channel_order="BGR")
    image = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    as_student = v2.Compose(student.tensor_steps())(image)
    as_teacher = v2.Compose(model.preprocessing.tensor_steps())(image)
    expected = model(as_teacher)
    got = Teacher(model, student)(as_student)
    assert (got - expected).abs().max().item() < 1e-4 * expected.abs().max().item()
    assert not Teacher(model, student).model.training  # its BN statistics are its own, not the batch's


def test_teachers_are_a_list_in_the_recipe_and_refused_when_malformed() -> None:
    config = load_config(None, ["distill.teachers=[a.safetensors, shufflenet_v2_x1_0.cifar10]", "distill.alpha=1"])
    assert config.distill.teachers == ["a.safetensors", "shufflenet_v2_x1_0.cifar10"] and config.distill.alpha == 1.0
    with pytest.raises(UserError, match=re.escape("distill.teachers: expected a list, got 'a.pt'")):
        load_config(None, ["distill.teachers=a.pt"])
    with pytest.raises(UserError, match=re.escape("distill.alpha: must be at most 1, got 1.5")):
        load_config(None, ["distill.alpha=1.5"])
    with pytest.raises(UserError, match=re.escape("distill.temperature: must be greater than 0")):
        load_config(None, ["distill.temperature=0"])


def test_with_alpha_one_the_student_learns_from_its_teacher_alone(tiny, tmp_path: Path) -> None:
    """At alpha 1 the labels do not reach the loss, so label smoothing changes nothing; below 1 it does."""
    config, data = tiny
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", tmp_path / "teacher") == 0
    teacher = tmp_path / "teacher" / "model.safetensors"

    def student(name: str, alpha: float, smoothing: float) -> dict:
        assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", tmp_path / name, "--teacher", teacher,
                   "--set", f"distill.alpha={alpha}", "--set", f"train.label_smoothing={smoothing}") == 0
        return final_weights(tmp_path / name)

    assert_same_weights(student("a", 1.0, 0.0), student("b", 1.0, 0.5), atol=0)
    changed = student("c", 0.5, 0.5)
    assert max((changed[k] - final_weights(tmp_path / "a")[k]).abs().max().item() for k in changed) > 1e-4
    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["distill"]
    assert recorded == {"teachers": [str(teacher)], "alpha": 1.0, "temperature": 4.0}


def test_a_teacher_of_other_classes_is_refused_in_one_line(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    assert cli("train", config, "--data", data, "--work-dir", tmp_path / "run", "--teacher", "shufflenet_v1_g3_x1_0.cifar10") == 2
    err = capsys.readouterr().err
    assert "distill.teachers: shufflenet_v1_g3_x1_0.cifar10 predicts 10 classes (airplane, automobile, bird, cat, deer, ...), " \
           "not the training data's 2 (airplane, frog) in that order" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # a setup that fails leaves nothing behind
