"""The fresh-process runner takes a function defined where the learner wrote it: a notebook or a
script's __main__, sent by value with cloudpickle."""
import subprocess
import sys
import textwrap
import threading

import pytest

from costlab.isolate import UnpicklableVariant, isolate


def _run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "variant_script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)


def test_a_function_defined_in_a_scripts_main_runs_in_a_fresh_process(tmp_path):
    """A function of __main__ cannot be imported by the child; it must travel by value, with the
    global it reads and the closure it captured."""
    proc = _run_script(tmp_path, """
        import json, os
        import torch
        from costlab.isolate import isolate

        SCALE = 3                      # a global of __main__ the variant reads

        def make(extra_mib):
            def variant(mib):          # a closure over extra_mib, defined in __main__
                block = torch.ones(mib + extra_mib, 2**18)
                return {"pid": os.getpid(), "mib": block.numel() * 4 // 2**20, "scaled": SCALE * mib}
            return variant

        if __name__ == "__main__":
            result = isolate(make(100), 200)
            print(json.dumps({"parent": os.getpid(), **result}))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert result["pid"] != result["parent"]
    assert result["mib"] == 300 and result["scaled"] == 600
    assert result["peak_mem_bytes"] > 250 * 2**20  # the block was allocated after the baseline


def test_an_unpicklable_capture_is_named_in_the_error(tmp_path):
    proc = _run_script(tmp_path, """
        import threading
        from costlab.isolate import isolate

        guard = threading.Lock()       # locks cannot cross a process boundary

        def variant():
            with guard:
                return {"ok": True}

        if __name__ == "__main__":
            isolate(variant)
    """)
    assert proc.returncode != 0
    assert "UnpicklableVariant" in proc.stderr
    assert "'guard'" in proc.stderr and "lock" in proc.stderr.lower()
    assert "variant" in proc.stderr


def test_an_unpicklable_argument_is_named_too():
    def variant(x):
        return {"x": 1}

    with pytest.raises(UnpicklableVariant, match="argument 'x'"):
        isolate(variant, x=threading.Lock())


def test_a_variant_that_captures_a_large_object_is_refused_before_it_runs():
    big = bytearray(40 * 2**20)

    def variant():
        return {"n": len(big)}

    with pytest.raises(UnpicklableVariant, match="'big'"):
        isolate(variant)


def test_a_string_target_is_refused_with_what_to_pass_instead():
    with pytest.raises(TypeError, match="takes the variant's function"):
        isolate("costlab.workloads:lm_training")
