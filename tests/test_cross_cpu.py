"""Same numbers on other x86-64 CPUs: every model's training slice on emulated Intel and AMD CPUs.

``bench/cross_cpu.py`` (``python -m bench.cross_cpu``) trains a short, seeded slice of each model family with the
stages' own code in the reproducible numerics. Here it runs natively and under
``qemu-x86_64`` as an Intel Haswell (L1d 32 KiB, L2 4 MiB) and an AMD EPYC-Rome with
the emulator's legacy cache table (L1d 64 KiB, L2 512 KiB): other vendor, other
caches, no AVX-512. Every slice must give the same weights and forward pass on all
three. Before the numerics pinned ``TF_ENABLE_ONEDNN_OPTS`` and replaced TensorFlow's
approximate ``rsqrt``, the emotion CNN differed on all three; before they replaced
Keras' QR-based orthogonal initializer, the two sentiment RNN slices differed on the
64 KiB L1d (stages/common/numerics.py). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from bench.cross_cpu import SLICES, missing_emulator, run_on

CPUS = ("Haswell", "EPYC-Rome,legacy-cache=on")


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    reason = missing_emulator()
    if reason:
        pytest.skip(reason)
    with concurrent.futures.ThreadPoolExecutor(len(CPUS) + 1) as pool:
        futures = {cpu: pool.submit(run_on, cpu, list(SLICES)) for cpu in CPUS}
        futures["native"] = pool.submit(run_on, None, list(SLICES))
        return {cpu: future.result() for cpu, future in futures.items()}


def test_the_emulated_cpus_report_another_vendor_and_other_caches(runs: dict[str, dict]) -> None:
    haswell, rome = (runs[cpu]["cpu"] for cpu in CPUS)
    assert (haswell["vendor"], rome["vendor"]) == ("GenuineIntel", "AuthenticAMD")
    assert haswell["caches_kib"]["L1d"] != rome["caches_kib"]["L1d"]
    assert haswell["caches_kib"]["L2"] != rome["caches_kib"]["L2"]
    assert not haswell["avx512f"] and not rome["avx512f"]
    assert {run["numerics"] for run in runs.values()} == {"reproducible"}


@pytest.mark.parametrize("model", list(SLICES))
def test_a_model_trains_to_the_same_bytes_on_every_cpu(runs: dict[str, dict], model: str) -> None:
    reference = runs[CPUS[0]][model]
    assert len(set(reference["losses"])) > 1, "the slice must train (its loss moves)"
    for cpu, run in runs.items():
        assert run[model]["losses"] == reference["losses"], f"{model} on {cpu}: other losses"
        assert run[model]["weights"] == reference["weights"], f"{model} on {cpu}: other weights after training"
        assert run[model]["forward"] == reference["forward"], f"{model} on {cpu}: other inference outputs"
