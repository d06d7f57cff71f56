"""Cross-CPU check: does every model train to the same bytes on other x86-64 CPUs?

A short, seeded training slice of each model family (the dense net of tutorials
01-03, the emotion CNN, the sentiment RNN as both the sample's LSTM and the real-data
recipe's bidirectional GRU, the n-gram baseline, the load LSTM), built and trained by the stages' own
code in the reproducible numerics, runs natively and under ``qemu-x86_64 -cpu
MODEL`` for a panel of emulated CPUs. The emulator reports the model's CPUID:
vendor, instruction sets and cache sizes, which is all the numeric libraries read
from the host. Each slice gives a digest of its weights after training and of an
inference-mode forward pass; a CPU agrees when every digest equals the reference
(the first emulated CPU: emulated-versus-emulated is the clean comparison, the
emulator computes each instruction the same way whatever CPUID it reports).

    .venv/bin/python -m bench.cross_cpu            # native + the whole panel (`make cross-cpu`)
    .venv/bin/python -m bench.cross_cpu --cpus Haswell EPYC-Rome --no-native
    .venv/bin/python -m bench.cross_cpu --worker   # the slices in this process, JSON on stdout

Writes ``bench/results/cross_cpu.json`` (model x CPU: digest, equal to the
reference or not; what each CPU's CPUID said) and prints the README's table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/cross_cpu.json"
# Three Intel and four AMD models and a Hygon: three vendors, L1d 32 or 64 KiB, L2 512 KiB or 4 MiB,
# L3 8-32 MiB. `legacy-cache=on` gives an AMD model the emulator's old cache table (L1d 64 KiB): the
# only way to vary L1 here, every other model says 32 KiB. The emulator (QEMU 7.2's TCG) runs up to
# AVX2 and masks AVX-512 even for Icelake-Server: the native machine is the AVX-512 case.
PANEL = (
    "Haswell",
    "Skylake-Client",
    "Icelake-Server",
    "EPYC",
    "EPYC-Rome",
    "EPYC-Milan",
    "EPYC-Rome,legacy-cache=on",
    "Dhyana",
)
QEMU = "qemu-x86_64"
SEED = 42


def missing_emulator() -> str | None:
    """Why the emulated CPUs cannot run here, or None when they can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian/Ubuntu: apt-get install qemu-user; `make cross-cpu` tries)"
    return None


# --- what the (emulated) CPU says it is -------------------------------------------------------------

# cpuid(leaf, subleaf, uint32 out[4]) in x86-64 machine code (System V ABI): Python has no CPUID, and
# /proc/cpuinfo under the emulator describes the host, not the CPU the program sees.
_CPUID_CODE = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3".replace(" ", ""))


def cpu_identity() -> dict[str, Any]:
    """Vendor, brand, AVX-512 and per-core data cache sizes (KiB) as CPUID reports them to this process."""
    import ctypes
    import mmap

    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)

    def cpuid(leaf: int, sub: int = 0) -> list[int]:
        out = (ctypes.c_uint32 * 4)()
        function(leaf, sub, out)
        return list(out)

    def text(*registers: int) -> str:
        return b"".join(r.to_bytes(4, "little") for r in registers).decode("ascii", "replace").strip("\0 ")

    _, b, c, d = cpuid(0)
    vendor = text(b, d, c)
    brand = text(*[r for leaf in (0x80000002, 0x80000003, 0x80000004) for r in cpuid(leaf)])
    caches: dict[str, int] = {}
    leaf = 0x8000001D if vendor in ("AuthenticAMD", "HygonGenuine") else 4  # deterministic cache parameters
    for index in range(8):
        a, b, c, _ = cpuid(leaf, index)
        kind, level = a & 31, (a >> 5) & 7
        if kind == 0:
            break
        if kind != 2:  # data or unified, not instruction
            size = ((b >> 22) + 1) * (((b >> 12) & 1023) + 1) * ((b & 4095) + 1) * (c + 1)
            caches[f"L{level}{'d' if level == 1 else ''}"] = size // 1024
    avx512f = bool(cpuid(7)[1] >> 16 & 1)
    function = None  # type: ignore[assignment]  # drop the pointer before the page goes
    del address
    return {"vendor": vendor, "brand": brand, "avx512f": avx512f, "caches_kib": caches}


# --- the slices (run in the worker process) ---------------------------------------------------------


def _digest(trainer, forward_inputs, losses) -> dict[str, Any]:
    import numpy as np

    weights = hashlib.sha256()
    for variable in trainer.model.weights:
        weights.update(np.ascontiguousarray(variable.numpy()).tobytes())
    forward = np.asarray(trainer.predict_step(forward_inputs))
    return {
        "weights": weights.hexdigest(),
        "forward": hashlib.sha256(np.ascontiguousarray(forward).tobytes()).hexdigest(),
        "losses": [float(x) for x in losses],
    }


def _train(trainer, batches) -> list[float]:
    return [float(trainer.train_step(x, y)) for x, y in batches]


def dense_net_slice() -> dict[str, Any]:
    """metrics_demo's multiclass net (13 -> 20 -> 10 -> 3, SGD), four batches of standardized features."""
    import keras
    import numpy as np

    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer
    from stages.metrics_demo import ProblemParams
    from stages.models.dense_net import build_dense_net

    _, p = load_params("metrics_demo.multiclass", ProblemParams)
    seed_everything(SEED)
    trainer = Trainer(
        build_dense_net(13, p.hidden_units, 3),
        keras.optimizers.SGD(p.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((4 * p.batch_size, 13)).astype(np.float32)
    y = rng.integers(0, 3, len(x))
    batches = [(x[i : i + p.batch_size], y[i : i + p.batch_size]) for i in range(0, len(x), p.batch_size)]
    return _digest(trainer, x, _train(trainer, batches))


def emotion_cnn_slice(augment: bool = True) -> dict[str, Any]:
    """The emotion CNN at its default params, Adam, two augmented batches of 48x48 faces."""
    import keras
    import numpy as np

    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer
    from stages.models.emotion_cnn import build_emotion_cnn
    from stages.train_emotion_cnn import STAGE, TrainEmotionCnnParams, WeightedCrossEntropy, augment_batches

    _, p = load_params(STAGE, TrainEmotionCnnParams)
    seed_everything(SEED)
    trainer = Trainer(
        build_emotion_cnn(p.block_filters, p.dropout, p.head_filters),
        keras.optimizers.Adam(p.learning_rate),
        WeightedCrossEntropy([1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 1.0]),  # the balanced mode's path
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
    )
    rng = np.random.default_rng(SEED)
    images = (rng.integers(0, 256, (2 * p.batch_size, 48, 48, 1)) / 255.0).astype(np.float32)
    labels = rng.integers(0, 7, len(images))
    b = p.batch_size
    batches = [(images[i : i + b], labels[i : i + b]) for i in range(0, len(images), b)]
    if augment:
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(b)
        batches = [(x.numpy(), y.numpy()) for x, y in augment_batches(dataset, SEED, 0, p.augment_shift)]
    return _digest(trainer, images[:16], _train(trainer, batches))


def sentiment_rnn_slice(recipe: bool) -> dict[str, Any]:
    """The sentiment RNN: the sample's LSTM, or (``recipe``) the real-data recipe's options; three padded batches."""
    import yaml

    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.train_sentiment_rnn import STAGE, TrainSentimentRnnParams, new_trainer

    _, p = load_params(STAGE, TrainSentimentRnnParams)
    if recipe:
        overrides = yaml.safe_load((ROOT / "recipes/real-data.yaml").read_text())[STAGE]
        p = TrainSentimentRnnParams.model_validate({**p.model_dump(), **overrides})
    seed_everything(SEED)
    vocab = 500
    trainer = new_trainer(vocab, p)
    batches = _review_batches(vocab)
    return _digest(trainer, batches[0][0], _train(trainer, batches))


def _review_batches(vocab: int) -> list[tuple[dict[str, Any], Any]]:
    """Three batches of 16 padded reviews of 5-59 token ids, with labels."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    batches = []
    for _ in range(3):
        lengths = rng.integers(5, 60, 16)
        tokens = np.zeros((16, int(lengths.max())), np.int64)  # 0 pads
        for row, n in enumerate(lengths):
            tokens[row, :n] = rng.integers(1, vocab, n)
        batches.append(({"token_indexes": tokens, "sequence_length": lengths}, rng.integers(0, 2, 16)))
    return batches


def sentiment_ngram_slice() -> dict[str, Any]:
    """The n-gram baseline at its default params: NB ratios from the batches, then three Adam steps."""

    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.models.sentiment_ngram import nb_ratios, set_nb_ratios
    from stages.train_sentiment_ngram import STAGE, TrainSentimentNgramParams, new_trainer

    _, p = load_params(STAGE, TrainSentimentNgramParams)
    seed_everything(SEED)
    vocab = 500
    trainer = new_trainer(vocab, p)
    batches = _review_batches(vocab)
    set_nb_ratios(trainer.model, nb_ratios(batches, vocab, p.buckets, p.nb_alpha))
    return _digest(trainer, batches[0][0], _train(trainer, batches))


def load_rnn_slice() -> dict[str, Any]:
    """The load LSTM with calendar inputs at its default params, Adam, four batches."""
    import keras
    import numpy as np

    from stages.common.params import load_params
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer
    from stages.models.load_rnn import build_load_rnn
    from stages.train_load_rnn import STAGE, TrainLoadRnnParams

    _, p = load_params(STAGE, TrainLoadRnnParams)
    seed_everything(SEED)
    look_back, n_calendar = 5, 8
    trainer = Trainer(
        build_load_rnn(look_back, lstm_units=p.lstm_units, dense_units=p.dense_units, n_calendar=n_calendar),
        keras.optimizers.Adam(learning_rate=p.learning_rate),
        keras.losses.MeanSquaredError(),
    )
    rng = np.random.default_rng(SEED)
    n = 4 * p.batch_size
    days = rng.standard_normal((n, look_back, 24)).astype(np.float32)
    calendar = rng.integers(0, 2, (n, look_back + 1, n_calendar)).astype(np.float32)
    target = rng.standard_normal((n, 24)).astype(np.float32)
    b = p.batch_size
    batches = [({"days": days[i : i + b], "calendar": calendar[i : i + b]}, target[i : i + b]) for i in range(0, n, b)]
    return _digest(trainer, batches[0][0], _train(trainer, batches))


SLICES = {
    "dense_net": dense_net_slice,
    "emotion_cnn": emotion_cnn_slice,
    "sentiment_rnn": lambda: sentiment_rnn_slice(recipe=False),
    "sentiment_rnn_recipe": lambda: sentiment_rnn_slice(recipe=True),
    "sentiment_ngram": sentiment_ngram_slice,
    "load_rnn": load_rnn_slice,
}


def worker(names: list[str]) -> dict[str, Any]:
    """Every slice in ``names`` in this process (the numerics are pinned by importing ``stages``)."""
    import stages  # pins the numerics before TensorFlow loads

    out: dict[str, Any] = {"numerics": stages.NUMERICS, "cpu": cpu_identity()}
    for name in names:
        start = time.perf_counter()
        out[name] = SLICES[name]()
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
    return out


# --- the driver -------------------------------------------------------------------------------------


def run_on(cpu: str | None, names: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> dict:
    """The slices in a fresh process: natively (``cpu`` None) or under the emulator as ``cpu``."""
    command = [sys.executable, "-m", "bench.cross_cpu", "--worker", *names]
    if cpu is not None:
        command = [QEMU, "-cpu", cpu, *command]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{cpu or 'native'}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def _last_line(error: str) -> str:
    """The telling line of a crashed run's stderr (the emulator's own warnings dropped)."""
    lines = [line for line in error.splitlines() if line.strip() and not line.startswith("qemu-x86_64: warning")]
    told = [line for line in lines if "what():" in line or "Error" in line]
    return (told or lines or ["(no output)"])[-1].strip()


def identify(cpu: str | None) -> dict[str, Any]:
    """What CPUID says natively (``cpu`` None) or under the emulator as ``cpu`` (no TensorFlow: seconds)."""
    command = [sys.executable, "-m", "bench.cross_cpu", "--identify"]
    if cpu is not None:
        command = [QEMU, "-cpu", cpu, *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(runs: dict[str, dict], names: list[str], reference: str) -> dict[str, dict[str, Any]]:
    """model -> CPU -> {digest, equal}: equal when weights and forward pass match the reference CPU's."""
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        ref = runs[reference][name]
        for cpu, run in runs.items():
            row = run[name]
            table.setdefault(name, {})[cpu] = {
                "weights": row["weights"][:16],
                "forward": row["forward"][:16],
                "first_loss": row["losses"][0],
                "equal": row["weights"] == ref["weights"] and row["forward"] == ref["forward"],
            }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs="*", help="run these slices (default: all) here and print JSON")
    parser.add_argument("--cpus", nargs="+", default=list(PANEL), help="emulated CPU models (qemu-x86_64 -cpu)")
    parser.add_argument("--no-native", action="store_true", help="skip the native run")
    parser.add_argument("--models", nargs="+", choices=list(SLICES), default=list(SLICES))
    parser.add_argument("--jobs", type=int, default=2, help="emulated CPUs run at once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--identify", action="store_true", help="print this process's CPUID identity (JSON)")
    parser.add_argument(
        "--table", action="store_true", help="from --out: record each CPU's CPUID identity and print the table"
    )
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker or list(SLICES))))
        return
    if args.identify:
        print(json.dumps(cpu_identity()))
        return
    if args.table:
        out = json.loads(args.out.read_text())
        out["cpus"] = {cpu: identify(None if cpu == "native" else cpu) for cpu in out["seconds"]}
        args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(markdown_table(out))
        return
    reason = missing_emulator()
    if reason:
        raise SystemExit(f"error: {reason}")

        from bench.common import machine_info, write_result

    runs: dict[str, dict] = {}
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_on, cpu, args.models): cpu for cpu in args.cpus}
        if not args.no_native:
            futures[pool.submit(run_on, None, args.models)] = "native"
        failed: dict[str, str] = {}
        for future in concurrent.futures.as_completed(futures):
            cpu = futures[future]
            try:
                runs[cpu] = future.result()
            except RuntimeError as exc:  # a CPU on which the slices crash is a result too
                failed[cpu] = _last_line(str(exc))
                print(f"{cpu:16s} FAILED: {failed[cpu]}", flush=True)
                continue
            print(f"{cpu:16s} done in {runs[cpu]['wall_seconds']:7.1f} s", flush=True)
    ordered = {cpu: runs[cpu] for cpu in [*args.cpus, *([] if args.no_native else ["native"])] if cpu in runs}
    reference = next(iter(ordered))
    table = compare(ordered, args.models, reference)
    verdict = {name: all(row["equal"] for cpu, row in rows.items() if cpu != "native") for name, rows in table.items()}
    out = {
        "reference": reference,
        "emulator": subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "numerics": ordered[reference]["numerics"],
        "identical_on_every_emulated_cpu": verdict,
        "native_equal": {name: rows["native"]["equal"] for name, rows in table.items() if "native" in rows},
        "table": table,
        "cpus": {cpu: run["cpu"] for cpu, run in ordered.items()},
        "failed": {cpu: {"error": error, "cpu": identify(cpu)} for cpu, error in failed.items()},
        "seconds": {cpu: run["wall_seconds"] for cpu, run in ordered.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
    }
    write_result(args.out, out)
    print(markdown_table(out))
    print(f"-> {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def markdown_table(out: dict[str, Any]) -> str:
    """The README's table: one row per CPU (what CPUID says), one column per model (= or the digest)."""
    models = list(out["table"])
    lines = [
        "| CPU (`-cpu`) | vendor | L1d / L2 / L3 | AVX-512 | " + " | ".join(f"`{m}`" for m in models) + " |",
        "|---" * (4 + len(models)) + "|",
    ]
    for cpu, identity in out["cpus"].items():
        caches = identity["caches_kib"]
        sizes = " / ".join(_size(caches.get(level)) for level in ("L1d", "L2", "L3"))
        marks = ["=" if out["table"][m][cpu]["equal"] else f"`{out['table'][m][cpu]['weights'][:8]}`" for m in models]
        avx512 = "yes" if identity["avx512f"] else "no"
        lines.append(f"| {cpu} | {identity['vendor']} | {sizes} | {avx512} | " + " | ".join(marks) + " |")
    for cpu, failure in out.get("failed", {}).items():
        identity = failure["cpu"]
        sizes = " / ".join(_size(identity["caches_kib"].get(level)) for level in ("L1d", "L2", "L3"))
        avx512 = "yes" if identity["avx512f"] else "no"
        crashed = [f"crashed: {failure['error'].removeprefix('what():').strip()}"] + ["—"] * (len(models) - 1)
        lines.append(f"| {cpu} | {identity['vendor']} | {sizes} | {avx512} | " + " | ".join(crashed) + " |")
    return "\n".join(lines)


def _size(kib: int | None) -> str:
    if kib is None:
        return "?"
    return f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"


if __name__ == "__main__":
    main()
