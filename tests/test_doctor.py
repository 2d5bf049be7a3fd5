"""``python -m fsslib doctor``: every check reports one line; a failing check does not stop the others."""
import pytest

from fsslib.__main__ import main
from fsslib.experiments import doctor

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_doctor_runs_the_cycle_of_a_method_on_images_and_cached_features():
    lines = []
    checks = doctor.run_checks("cpu", methods=("pfenet",), compile_check=False, report=lines.append)
    assert lines[0] == "device: cpu" and lines[1].startswith("torch ")
    names = [c.name for c in checks]
    assert names == ["pfenet, images: train -> interrupt -> resume -> evaluate",
                     "pfenet, cached features: train -> interrupt -> resume -> evaluate", "mixed precision"]
    assert [c.passed for c in checks] == [True, True, None]
    assert "resumed = uninterrupted" in checks[0].detail
    assert any(line.startswith("PASS  pfenet, cached features") for line in lines)


def test_a_failing_check_is_reported_with_its_error_and_the_others_still_run(monkeypatch):
    cycle = doctor.train_resume_evaluate

    def broken_for_panet(config, source, folder):
        if config.model == "panet":
            raise RuntimeError("RNG state must be a torch.ByteTensor")
        return cycle(config, source, folder)

    monkeypatch.setattr(doctor, "train_resume_evaluate", broken_for_panet)
    lines = []
    checks = doctor.run_checks("cpu", methods=("panet", "protonet"), compile_check=False, report=lines.append)
    assert [c.passed for c in checks] == [False, True, None]
    assert any(line.startswith("FAIL  panet, images") and "RuntimeError: RNG state must be a torch.ByteTensor" in line
               for line in lines)


def test_doctor_refuses_a_cuda_device_that_is_not_there(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["doctor", "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
