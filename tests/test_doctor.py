"""`python -m costlab doctor`: the cases this machine can make (a CPU with AVX512-BF16, no RAPL,
model packages missing vs present), and its exit status."""
import subprocess
import sys
from pathlib import Path

from costlab import hardware
from costlab.course import doctor

CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2\n"


def test_a_cpu_with_avx512_bf16_is_said_to_have_fast_bf16():
    found = {f.topic: f for f in doctor.device_findings(cuda=False, mps=False, flags=hardware.cpu_flags(CPUINFO_BF16))}
    assert "avx512_bf16" in found["device"].text
    assert found["bf16"].status == "ok" and "avx512_bf16" in found["bf16"].text


def test_a_cpu_without_bf16_kernels_is_told_bf16_will_not_speed_up():
    found = {f.topic: f for f in doctor.device_findings(cuda=False, mps=False, flags=hardware.cpu_flags(CPUINFO_AVX2))}
    assert found["bf16"].status == "note" and "not expected to be faster" in found["bf16"].text


def test_apple_mps_is_told_it_runs_the_cpu_profile():
    found = {f.topic: f for f in doctor.device_findings(cuda=False, mps=True, flags=set())}
    assert "cpu profile" in found["mps"].text and "not measured" in found["mps"].text


def test_no_rapl_means_energy_is_estimated(tmp_path):
    found = {f.topic: f for f in doctor.metering_findings(cuda=False, rapl=tmp_path / "absent")}
    assert "estimated" in found["energy meter"].text


def test_missing_model_packages_block_the_course_with_the_install_command():
    found = doctor.model_findings(find_spec=lambda name: None)
    blocking = [f for f in found if f.status == "blocks"]
    assert len(blocking) == 2 and all(f.fix == "python -m costlab install-models" for f in blocking)
    present = doctor.model_findings(find_spec=lambda name: object())
    assert not [f for f in present if f.status == "blocks"]


def test_an_old_python_and_a_missing_torch_block():
    assert doctor.python_finding((3, 10)).status == "blocks"
    assert doctor.python_finding((3, 11)).status == "ok"
    found = doctor.package_findings(installed=lambda p: None if p == "torch" else "5.23.0", pins={})
    assert [f.topic for f in found if f.status == "blocks"] == ["torch"]


def test_a_version_other_than_the_lock_is_a_note_not_a_block():
    found = doctor.package_findings(installed=lambda p: "9.9.9" if p == "peft" else "5.0.0", pins={"peft": "0.21.2"})
    peft = next(f for f in found if f.topic == "peft")
    assert peft.status == "note" and "0.21.2" in peft.text


def test_minutes_come_from_a_measured_run_or_are_said_to_be_unknown(tmp_path):
    state = tmp_path / "course_state.json"
    state.write_text('{"00_x": {"profile": "cpu", "status": "ok", "seconds": 120},'
                     ' "01_y": {"profile": "cpu", "status": "ok", "seconds": 180}}')
    assert "about 5 min for 2 lessons" in doctor.minutes_finding("cpu", [state]).text
    assert "no measured run" in doctor.minutes_finding("gpu", [state]).text


def test_doctor_runs_here_in_seconds_and_exits_zero_when_nothing_blocks():
    proc = subprocess.run([sys.executable, "-m", "costlab", "doctor"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert "Nothing blocks the course." in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0
