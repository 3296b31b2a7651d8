"""The benchmark's report (``run.py``): the ratio and per-side tables, the targets checked against them (the toy
benchmark's and, with ``--model-dir``, issue 13's on a real model), and the README block they are written to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def fmt(s: dict[str, float | None], digits: int = 2, pct: bool = False) -> str:
    if s["median"] is None:
        return "n/a"
    if pct:
        return f"{100 * s['median']:.1f}%"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| comparison (ift vs TRL) | data | real tokens/s | padding fraction | preprocessing time | "
        "peak RSS | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = r["label"] + (f" (ift auto = {r['ift_resolved']})" if r["ift_batching"] == "auto" else "")
        pad = r["ratios"]["padding_fraction"]
        pad_text = fmt(pad) if pad["median"] is not None else "n/a (TRL 0%)"
        lines.append(
            f"| {name} | {r['data']} | {fmt(r['ratios']['tokens_per_s'])} | {pad_text} | "
            f"{fmt(r['ratios']['preprocess_s'])} | {fmt(r['ratios']['peak_rss_mb'])} | "
            f"{fmt(r['ratios']['final_loss'], 3)} |"
        )
    lines += [
        "",
        "Medians per side (ift / TRL):",
        "",
        "| comparison | data | real tokens/s | padding fraction | preprocessing s (data only) | "
        "peak RSS MB (growth over the 2nd half) | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        i, t = r["ift"], r["trl"]
        lines.append(
            f"| {r['label']} | {r['data']} | {i['tokens_per_s']['median']:.0f} / {t['tokens_per_s']['median']:.0f} | "
            f"{fmt(i['padding_fraction'], pct=True)} / {fmt(t['padding_fraction'], pct=True)} | "
            f"{i['preprocess_s']['median']:.2f} ({r['ift_data_prep_s']['median']:.2f}) / "
            f"{t['preprocess_s']['median']:.2f} ({r['trl_data_prep_s']['median']:.2f}) | "
            f"{i['peak_rss_mb']['median']:.0f} ({r['rss_growth_mb']['ift']['median']:+.0f}) / "
            f"{t['peak_rss_mb']['median']:.0f} ({r['rss_growth_mb']['trl']['median']:+.0f}) | "
            f"{i['final_loss']['median']:.3f} / {t['final_loss']['median']:.3f} |"
        )
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    def find(label: str, data: str) -> dict[str, Any] | None:
        return next((r for r in results if r["label"] == label and r["data"] == data), None)

    out: list[tuple[str, bool | None, str]] = []
    default = find("default vs default", "lognormal")
    if default:
        tps = default["ratios"]["tokens_per_s"]["median"]
        out.append(("ift default vs TRL default, real tokens/s >= 1.5x (lognormal)", tps >= 1.5, f"{tps:.2f}x"))
        pad = default["ift"]["padding_fraction"]["median"]
        out.append(("padding fraction <= 5% with ift's default (lognormal)", pad <= 0.05, f"{100 * pad:.1f}%"))
        pre = default["ratios"]["preprocess_s"]["median"]
        out.append(("preprocessing time <= TRL's", pre <= 1.0, f"{pre:.2f}x"))
        rss = default["ratios"]["peak_rss_mb"]["median"]
        out.append(("peak RSS <= 1.1x TRL's", rss <= 1.1, f"{rss:.2f}x"))
    for label in (
        "padding vs padding",
        "packing vs packing",
        "padding-free vs padding-free",
        "length-grouped vs group_by_length",
    ):
        for data in ("lognormal", "constant"):
            r = find(label, data)
            if r:
                tps = r["ratios"]["tokens_per_s"]["median"]
                out.append((f"like-for-like {label} ({data}), real tokens/s >= 1.0x", tps >= 1.0, f"{tps:.2f}x"))
    packing = find("packing vs packing", "lognormal")
    if packing:
        eff = 1 - packing["ift"]["padding_fraction"]["median"]
        out.append(("ift packing efficiency >= 95% (lognormal)", eff >= 0.95, f"{100 * eff:.1f}%"))
    if default:
        growth = default["rss_growth_mb"]["ift"]["max"]
        peak = default["ift"]["peak_rss_mb"]["median"]
        out.append(
            (
                "ift's RSS flat after warm-up (grows < 1% of its peak over the 2nd half of a run)",
                growth < 0.01 * peak,
                f"{growth:+.1f} MB at most",
            )
        )
    for r in results:
        if not r["ift_counters_match"]:
            out.append((f"ift's own token counters match the tensors ({r['label']}, {r['data']})", False, "differ"))
    return out


GIB = 1024  # the probe's RSS is in MiB


def real_targets(results: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """Issue 13's targets on a real model (full fine-tuning fp32, batch 8, max length 512)."""

    def find(label: str) -> dict[str, Any] | None:
        return next((r for r in results if r["label"] == label), None)

    out: list[tuple[str, bool | None, str]] = []
    for label, floor in (
        ("default vs default", 3.0),
        ("padding vs padding", 1.5),
        ("padding-free vs padding-free", 1.2),
    ):
        r = find(label)
        if r:
            tps = r["ratios"]["tokens_per_s"]["median"]
            out.append((f"{label}, real tokens/s ift/TRL >= {floor}x", tps >= floor, f"{tps:.2f}x"))
    for label, what, limit in (
        ("default vs default", "ift's defaults", 4.0),
        ("gradient checkpointing, default vs default", "gradient_checkpointing = true", 3.0),
        ("LoRA r=16, default vs default", "LoRA r=16", 1.5),
    ):
        r = find(label)
        if r:
            mib = r["ift"]["peak_rss_mb"]["max"]  # the probe's MB are MiB (ru_maxrss / 1024)
            gb = mib * 2**20 / 1e9  # the targets are in decimal GB
            out.append(
                (
                    f"peak RSS with {what} <= {limit} GB (largest of the runs)",
                    gb <= limit,
                    f"{gb:.2f} GB = {mib / GIB:.2f} GiB",
                )
            )
    for r in results:
        if not r["ift_counters_match"]:
            out.append((f"ift's own token counters match the tensors ({r['label']}, {r['data']})", False, "differ"))
    return out


def update_readme(block: str, marker: str = "results") -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        print(f"README.md has no {start} ... {end} block; not updated")
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")
    print(f"updated {readme}")
