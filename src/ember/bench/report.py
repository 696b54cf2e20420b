"""Markdown tables and a PNG chart from a benchmark report (see throughput.run)."""

from __future__ import annotations

from typing import Any


def machine_line(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    line = f"Machine: {cpu['model']}, {cpu['threads']} threads, flags: {', '.join(cpu['flags']) or 'none'}"
    if "amx_bf16" not in cpu["flags"]:
        line += " (no AMX)"
    if cpu.get("held_to"):
        held = " ".join(f"{name}={value}" for name, value in cpu["held_to"].items())
        line += f"; held to {cpu.get('torch_isa', '?')} ({held}): torch and oneDNN use no more than that (ONNX Runtime and OpenVINO pick their own)"
    peak = report.get("gemm_peak_gflops")
    if peak:
        bf16 = f"{peak['bf16']:.0f} GFLOP/s" if peak["bf16"] else "not measured (no native bf16: emulated, very slow)"
        line += f". torch matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {bf16}"
    load = report.get("load_average_start")
    if load:
        line += f". Load average (1 min) at start / end: {load[0]:.1f} / {report['load_average_end'][0]:.1f}"
    return line + "."


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def throughput_tables(report: dict[str, Any]) -> str:
    out = [machine_line(report), f"Date: {report['date']}; medians of {report['runs']} runs ({report.get('rounds', 1)} rounds "
           "of fresh processes, round-robin), each process after one untimed pass; "
           f"Ember from {report.get('ember_source', '?')}.", ""]
    for name, info in report["corpora"].items():
        out.append(f"**{name}**: {info['n']} texts, mean {info['mean_words']:.0f} words / "
                   f"{info['mean_tokens']:.1f} tokens (truncated at 256), corpus {info['fingerprint']}, "
                   f"{info.get('flops_per_token', 0) / 1e6:.1f} MFLOP/token; best peer: {info.get('best_peer', '-')}")
        out.append("")
        out.append("| engine | texts/s | best run texts/s | tokens/s | vs best peer | vs best same-precision peer "
                   "| % of GEMM peak (fp32 / bf16) | min cosine vs fp32 ST | peak RSS MB | first call (32 short) s | load s "
                   "| load avg |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for entry in report["engines"]:
            out.append(_throughput_row(entry, name))
        out.append("")
    return "\n".join(out)


def _label(entry: dict[str, Any]) -> str:
    result = entry.get("result", {})
    extra = [f"{k}={result[k]}" for k in ("dtype", "precision", "int8_kernel", "linear_kernel") if result.get(k)]
    label = entry["label"] + (f" ({', '.join(extra)})" if extra else "")
    return f"**{label}**" if entry["is_ember"] else label


def _throughput_row(entry: dict[str, Any], corpus_name: str) -> str:
    if "skipped" in entry:
        return f"| {_label(entry)} | {entry['skipped']} |" + " |" * 10
    result = entry["result"]
    run = result.get("corpora", {}).get(corpus_name)
    if run is None:
        return f"| {_label(entry)} | failed: {result.get('error', 'no result')} |" + " |" * 10
    bf16 = f"{100 * run['roofline_bf16']:.0f}%" if run.get("roofline_bf16") else "-"
    roof = f"{100 * run['roofline_fp32']:.0f}% / {bf16}"
    best = run["n"] / min(run["times_s"])
    return (f"| {_label(entry)} | {run['texts_s']:.1f} | {best:.1f} | {run['tokens_s']:.0f} | {_fmt(run.get('vs_best_peer'), '.2f', 'x')} "
            f"| {_fmt(run.get('vs_best_same_precision_peer'), '.2f', 'x')} | {roof} | {_fmt(run.get('min_cosine'), '.6f')} "
            f"| {result['peak_rss_mb']:.0f} | {result['first_call_s']:.3f} | {result['load_s']:.1f} "
            f"| {'/'.join(f'{x:.1f}' for x in result.get('load_average', []))} |")


def latency_table(report: dict[str, Any]) -> str:
    out = [machine_line(report), f"Date: {report['date']}; Ember from {report.get('ember_source', '?')}; one short text per call, "
           "10 warm-up calls then the timed calls.", "",
           "| engine | p50 ms | p99 ms | mean ms | calls | peak RSS MB |", "|---|---|---|---|---|---|"]
    for entry in report["engines"]:
        if "skipped" in entry:
            out.append(f"| {_label(entry)} | {entry['skipped']} | | | | |")
            continue
        r = entry["result"]
        if "error" in r:
            out.append(f"| {_label(entry)} | failed: {r['error']} | | | | |")
            continue
        out.append(f"| {_label(entry)} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} "
                   f"| {r['calls']} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def write_chart(report: dict[str, Any], path: str) -> bool:
    """Horizontal bars of texts/s per engine, one panel per corpus. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(report["corpora"])
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [(e["name"], e["result"]["corpora"][name]["texts_s"], e["is_ember"]) for e in report["engines"]
                if name in e.get("result", {}).get("corpora", {})]
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color=["#d9480f" if r[2] else "#868e96" for r in rows])
        ax.invert_yaxis()
        ax.set_title(f"{name} ({report['corpora'][name]['mean_tokens']:.0f} tokens mean)")
        ax.set_xlabel("texts/s (higher is better)")
        for i, r in enumerate(rows):
            ax.text(r[1], i, f" {r[1]:.0f}", va="center", fontsize=8)
    fig.suptitle(f"all-MiniLM-L6-v2 on {report['cpu']['model']}, {report['cpu']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
