"""The comparison report: plots, `report.md` and a self-contained `report.html`.

Both documents are rendered from one list of blocks (headings, paragraphs,
tables, preformatted text, images), so they always say the same thing.
"""

import base64
import html
import os
import platform
import re
import sys

import numpy as np

from involution.app.files import atomic_write_json, atomic_write_text

CURVES_PNG = "curves.png"
KERNELS_PNG = "kernels.png"
SAMPLES_PNG = "samples.png"


# Figures ------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path):
    tmp = f"{path[:-4]}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_samples(images, labels, class_names, path, count=25):
    """The example's 5x5 grid of training images with their class names."""
    plt = _pyplot()
    side = int(np.ceil(np.sqrt(min(count, len(images)))))
    fig, axes = plt.subplots(side, side, figsize=(2 * side, 2 * side))
    for index, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if index < min(count, len(images)):
            ax.imshow(images[index])
            ax.set_title(class_names[int(labels[index])], fontsize=9)
    fig.suptitle("Training samples")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_curves(histories, path):
    """Loss and accuracy per epoch, train (solid) and test (dashed), side by side."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, history in enumerate(histories):
        epochs = [e["epoch"] for e in history["epochs"]]
        color = colors[index % len(colors)]
        for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.plot(epochs, [e.get(key, np.nan) for e in history["epochs"]], color=color,
                    label=f"{history['model']} train")
            ax.plot(epochs, [e.get(f"val_{key}", np.nan) for e in history["epochs"]], color=color,
                    linestyle="--", label=f"{history['model']} test")
    _finish_curves(plt, fig, ((loss_ax, "Loss"), (acc_ax, "Accuracy")), path)


def _finish_curves(plt, fig, titled_axes, path):
    for ax, title in titled_axes:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)


def plot_seed_curves(histories, path):
    """Per model, the mean over seeds of loss and accuracy per epoch (train
    solid, test dashed), with the test curves' spread (min to max) shaded."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, runs) in enumerate(group_by_model(histories).items()):
        color = colors[index % len(colors)]
        # Epochs that every seed finished.
        epochs = min(len(h["epochs"]) for h in runs)
        if not epochs:
            continue
        x = np.arange(1, epochs + 1)
        for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            train = np.array([[e.get(key, np.nan) for e in h["epochs"][:epochs]] for h in runs], float)
            test = np.array([[e.get(f"val_{key}", np.nan) for e in h["epochs"][:epochs]] for h in runs], float)
            ax.plot(x, train.mean(axis=0), color=color, label=f"{name} train")
            ax.plot(x, test.mean(axis=0), color=color, linestyle="--", label=f"{name} test ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
            ax.fill_between(x, test.min(axis=0), test.max(axis=0), color=color, alpha=0.2, linewidth=0)
    _finish_curves(plt, fig, ((loss_ax, "Loss (mean over seeds; test: min to max shaded)"),
                              (acc_ax, "Accuracy (mean over seeds; test: min to max shaded)")), path)


def involution_layers(model):
    """The model's Involution layers, nested ones included, in call order."""
    from involution.layer import Involution

    found = []

    def visit(layer):
        if isinstance(layer, Involution):
            found.append(layer)
            return
        for child in getattr(layer, "layers", []) or []:
            visit(child)

    visit(model)
    return found


def kernel_maps(model, images):
    """Per involution layer: a heat map of its generated kernels.

    For the paper's generators, the Keras example's map: the kernel summed
    over its K*K window and its groups. Local self-attention kernels sum to
    one over every window, so that sum is the same at every pixel; for them
    the map is the weight of the window's centre tap (each pixel's attention
    to itself), summed over the groups.

    Returns a list of `(label, array (N, H_out, W_out))`, computed in
    inference mode for `images` (uint8 or float in [0, 1]).
    """
    import keras

    from involution.attention import LocalAttentionKernelGenerator

    layers = involution_layers(model)
    if not layers:
        return []
    x = np.asarray(images, "float32")
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    probe = keras.Model(model.input, [layer.input for layer in layers])
    features = probe(x, training=False)
    if len(layers) == 1:
        features = [features]
    maps = []
    for layer, feature in zip(layers, features):
        kernel = keras.ops.convert_to_numpy(layer.kernel_generator(feature, training=False))
        if layer.data_format == "channels_first":
            kernel = np.moveaxis(kernel, 1, -1)
        if isinstance(layer.kernel_generator, LocalAttentionKernelGenerator):
            taps = layer.kernel_size * layer.kernel_size
            # Group-major layout: (groups, K*K) on the last axis.
            windows = kernel.reshape(kernel.shape[:-1] + (layer.group_number, taps))
            maps.append((f"{layer.name}\n(centre tap)", windows[..., taps // 2].sum(axis=-1)))
        else:
            maps.append((layer.name, kernel.sum(axis=-1)))
    return maps


def plot_kernels(models, images, path):
    """Each image beside its kernel heat map for every involution layer."""
    plt = _pyplot()
    columns = [("input", None)]
    for model in models:
        for layer_name, maps in kernel_maps(model, images):
            columns.append((f"{model.name}\n{layer_name}", maps))
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.8 * len(columns), 1.8 * rows), squeeze=False)
    for row in range(rows):
        for col, (title, maps) in enumerate(columns):
            ax = axes[row][col]
            ax.axis("off")
            if maps is None:
                ax.imshow(images[row])
            else:
                ax.imshow(maps[row], cmap="magma")
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("Generated kernels, summed over the K×K window and groups "
                 "(attention kernels: the centre tap's weight, summed over groups)")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    _save_figure(fig, path)
    plt.close(fig)


# Environment ------------------------------------------------------------------


def environment():
    """Backend, library versions and hardware, for the report header."""
    import keras

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    for module in ("numpy", "tensorflow", "jax", "torch", "matplotlib"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        pass
    cpu = platform.processor() or platform.machine()
    return {
        "backend": keras.backend.backend(),
        "versions": versions,
        "hardware": f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} {platform.release()}",
    }


def model_summary_text(model):
    lines = []
    model.summary(print_fn=lambda text, line_break=False: lines.append(text))
    return "\n".join(lines)


# Documents ------------------------------------------------------------------


def _fmt_pct(value):
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.2f}%"


def _fmt(value, digits=4):
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def summarize(history):
    """Final and best test metrics and time per epoch of one history."""
    epochs = history["epochs"]
    if not epochs:
        return {"final_accuracy": None, "best_accuracy": None, "final_loss": None,
                "best_loss": None, "epoch_time": None, "epochs": 0}
    accuracy = [e.get("val_accuracy", np.nan) for e in epochs]
    loss = [e.get("val_loss", np.nan) for e in epochs]
    times = [e["time_s"] for e in epochs]
    # An epoch that a process trained first includes compiling the step
    # (every resume starts one); the median of the others is the steady
    # state, where there are any.
    steady = [e["time_s"] for e in epochs if not e.get("first_in_process", e is epochs[0])]
    finite_acc = [a for a in accuracy if np.isfinite(a)]
    finite_loss = [v for v in loss if np.isfinite(v)]
    return {
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(finite_acc) if finite_acc else None,
        "final_loss": loss[-1],
        "best_loss": min(finite_loss) if finite_loss else None,
        "epoch_time": float(np.median(steady or times)),
        "epoch_time_includes_compilation": not steady,
        "first_epoch_time": times[0],
        "epochs": len(epochs),
    }


def summary_rows(histories):
    rows = []
    for history in histories:
        s = summarize(history)
        p = history["parameters"]
        rows.append([
            history["model"], f"{p['total']:,}", f"{p['trainable']:,}",
            f"{s['epochs']}/{history['epochs_planned']}", _fmt_pct(s["final_accuracy"]),
            _fmt_pct(s["best_accuracy"]), _fmt(s["final_loss"]),
            "–" if s["epoch_time"] is None
            else f"{s['epoch_time']:.1f} s" + (" (with compilation)" if s["epoch_time_includes_compilation"] else ""),
            history["status"],
        ])
    return rows


SUMMARY_HEADER = ["model", "parameters", "trainable", "epochs", "final test acc.",
                  "best test acc.", "final test loss", "time / epoch (median)", "status"]


def group_by_model(histories):
    """`{model name: [its histories, one per seed]}`, in the run's order."""
    groups = {}
    for history in histories:
        groups.setdefault(history["model"], []).append(history)
    return groups


def mean_and_std(values):
    """Mean and sample standard deviation (None for one value) of the finite `values`."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _fmt_spread(values):
    mean, std = mean_and_std(values)
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}%" + ("" if std is None else f" ± {100 * std:.2f}")


def seed_statistics(histories):
    """Per model: the seeds, final and best test accuracies and their means
    and standard deviations, and the median time per epoch over seeds."""
    statistics = []
    for name, runs in group_by_model(histories).items():
        summaries = [summarize(h) for h in runs]
        final = [s["final_accuracy"] for s in summaries]
        best = [s["best_accuracy"] for s in summaries]
        times = [s["epoch_time"] for s in summaries if s["epoch_time"] is not None]
        statistics.append(_model_statistics(name, runs[0]["parameters"]["total"], [h.get("seed") for h in runs],
                                            final, best, times, sum(h["status"] == "finished" for h in runs)))
    return statistics


def _model_statistics(name, parameters, seeds, final, best, times, finished):
    return {
        "model": name,
        "parameters": parameters,
        "seeds": seeds,
        "final_accuracy": final,
        "best_accuracy": best,
        "final_accuracy_mean_std": mean_and_std(final),
        "best_accuracy_mean_std": mean_and_std(best),
        "epoch_time": float(np.median(times)) if times else None,
        "finished": finished,
    }


SEED_HEADER = ["model", "parameters", "seeds", "final test acc. (mean ± std)", "best test acc. (mean ± std)",
               "final test acc. per seed", "time / epoch (median)"]


def seed_rows(histories):
    return statistics_rows(seed_statistics(histories))


def statistics_rows(statistics):
    """`SEED_HEADER`'s rows of per-model statistics (see `seed_statistics`)."""
    rows = []
    for stats in statistics:
        per_seed = ", ".join(f"{seed}: {_fmt_pct(value)}" for seed, value in zip(stats["seeds"], stats["final_accuracy"]))
        rows.append([
            stats["model"], f"{stats['parameters']:,}", str(len(stats["seeds"])),
            _fmt_spread(stats["final_accuracy"]), _fmt_spread(stats["best_accuracy"]), per_seed,
            "–" if stats["epoch_time"] is None else f"{stats['epoch_time']:.1f} s",
        ])
    return rows


# The settings that make two studies' runs the same experiment.
STUDY_KEYS = ("recipe", "epochs", "batch_size", "learning_rate", "limit", "backend")


def study_settings(run):
    """The settings of `run` that `merge_summaries` requires to agree."""
    return {key: run.get(key) for key in STUDY_KEYS}


def merge_summaries(summaries, sources=None):
    """Per model, the seeds of several studies' `summary.json` together.

    Studies of the same models run in different folders (or on different
    machines of one kind) are one study of more seeds where each model has
    the same parameter count in all of them, no seed of a model occurs
    twice (it would shrink the spread) and the recorded settings
    (`STUDY_KEYS`) agree; a summary that records no settings is taken as
    agreeing.

    Args:
        summaries: the parsed `summary.json` dicts, `{"models": [...]}`.
        sources: names of the summaries for error messages (default:
            their positions).

    Returns:
        The per-model statistics in `seed_statistics`' form, models in the
        order they first appear; the time per epoch is the median of the
        studies' medians.

    Raises:
        ValueError: where the studies cannot be merged.
    """
    sources = list(sources) if sources is not None else [f"summary {i}" for i in range(len(summaries))]
    settings, settings_source = None, None
    merged = {}
    for summary, source in zip(summaries, sources):
        if not isinstance(summary, dict) or not isinstance(summary.get("models"), list):
            raise ValueError(f"Expected a summary.json with a list of models. Received: {source}")
        if summary.get("settings") is not None:
            differ = [] if settings is None else sorted(
                k for k in STUDY_KEYS if summary["settings"].get(k) != settings.get(k))
            if differ:
                raise ValueError(
                    f"Expected studies with the same settings; {source} and {settings_source} differ in "
                    + ", ".join(f"{k} ({settings.get(k)!r}, {summary['settings'].get(k)!r})" for k in differ))
            settings, settings_source = summary["settings"], source
        for stats in summary["models"]:
            name = stats["model"]
            entry = merged.setdefault(name, {"model": name, "parameters": stats["parameters"], "seeds": [],
                                             "final_accuracy": [], "best_accuracy": [], "times": [],
                                             "finished": 0, "source": source})
            if stats["parameters"] != entry["parameters"]:
                raise ValueError(
                    f"Expected {name} to have one parameter count in every study. Received: "
                    f"{entry['parameters']:,} in {entry['source']}, {stats['parameters']:,} in {source}")
            repeated = sorted(set(entry["seeds"]) & set(stats["seeds"]))
            if repeated:
                raise ValueError(
                    f"Expected each seed of {name} in one study only. Received: seed "
                    f"{', '.join(map(str, repeated))} again in {source}")
            entry["seeds"] += stats["seeds"]
            entry["final_accuracy"] += stats["final_accuracy"]
            entry["best_accuracy"] += stats["best_accuracy"]
            entry["finished"] += stats.get("finished", 0)
            if stats.get("epoch_time") is not None:
                entry["times"].append(stats["epoch_time"])
    return [_model_statistics(e["model"], e["parameters"], e["seeds"], e["final_accuracy"], e["best_accuracy"],
                              e["times"], e["finished"]) for e in merged.values()]


def run_rows(histories, default_seed=None):
    """The summary table's rows with the seed after the model's name."""
    rows = summary_rows(histories)
    return [[row[0], str(h.get("seed", default_seed))] + row[1:] for row, h in zip(rows, histories)]


RUN_HEADER = SUMMARY_HEADER[:1] + ["seed"] + SUMMARY_HEADER[1:]


def _epochs_done(histories):
    done = sorted({len(h["epochs"]) for h in histories})
    if len(done) == 1:
        return f"{done[0]} epoch{'s' if done[0] != 1 else ''}"
    return "epochs as in the table"


def format_table(header, rows):
    """A plain-text table for the terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def display_path(path):
    """A local path as relative to the working folder where that is short
    (a report travels; the machine's folder names need not), else as it is."""
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    return relative if relative.split(os.sep)[:3].count(os.pardir) < 3 else path


def build_blocks(run, histories, summaries_text, figures):
    """The report's content, in order, as (kind, payload) blocks."""
    env = run["environment"]
    blocks = [("h1", "Involution vs convolution on CIFAR-10")]
    from involution.app.recipes import get_recipe

    recipe = get_recipe(run.get("recipe", "example"))
    blocks.append(("p", (
        f"Each model was trained with {recipe.sentence(run['epochs'], run['batch_size'], run['learning_rate'])}, "
        f"{_epochs_done(histories)}, evaluated on the test set after every epoch"
        + (" (the test loss includes the label smoothing)" if recipe.label_smoothing else "")
        + ". The time per epoch leaves out the epochs that include compiling "
        "the training step (the first of every invocation).")))
    blocks.append(("h2", "Run"))
    blocks.append(("table", (["setting", "value"], [
        ["command", run["command"]],
        ["recipe", run.get("recipe", "example")],
        ["data", display_path(run["data"])],
        ["training / test images", f"{run['train_size']:,} / {run['test_size']:,}"],
        ["seeds", ", ".join(map(str, run["seeds"]))] if run.get("per_seed_folders") else ["seed", str(run["seed"])],
        ["backend", env["backend"]],
        ["libraries", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
        ["hardware", env["hardware"]],
        ["started", run["started"]],
        ["wall time (this invocation)", f"{run['wall_time_s']:.0f} s"],
        ["training time (all models, all invocations)", f"{run['train_time_s']:.0f} s"],
    ])))
    per_seed = run.get("per_seed_folders", False)
    blocks.append(("h2", "Results"))
    if per_seed:
        blocks.append(("p", (
            "Each model was trained once per seed (the seed draws its initial weights and every epoch's "
            "order). Mean ± sample standard deviation over the seeds; a difference between two models "
            "smaller than their spreads is not evidence that either is better.")))
        blocks.append(("table", (SEED_HEADER, seed_rows(histories))))
        blocks.append(("h3", "Every run"))
        blocks.append(("table", (RUN_HEADER, run_rows(histories, run["seed"]))))
    else:
        blocks.append(("table", (SUMMARY_HEADER, summary_rows(histories))))
    for history in histories:
        if history.get("message"):
            title = f"{history['model']}, seed {history.get('seed', run['seed'])}" if per_seed else history["model"]
            blocks.append(("p", f"**{title}**: {history['message']}"))
    blocks.append(("h2", "Learning curves"))
    blocks.append(("img", (figures["curves"], "Loss and accuracy per epoch"
                           + (" (mean over seeds, test spread shaded)" if per_seed else ""))))
    if figures.get("kernels"):
        blocks.append(("h2", "Generated kernels"))
        blocks.append(("p", (
            "For 10 test images: the input and, for each involution layer, the kernel it "
            "generates at every pixel, summed over its K×K window and its groups. Local "
            "self-attention kernels sum to one over every window, so for them the map is the "
            "weight of the window's centre tap (each pixel's attention to itself), summed over "
            "the groups.")))
        blocks.append(("img", (figures["kernels"], "Kernel heat maps")))
    blocks.append(("h2", "Parameters"))
    for history in (runs[0] for runs in group_by_model(histories).values()):
        p = history["parameters"]
        blocks.append(("h3", history["model"]))
        blocks.append(("table", (["total", "trainable", "non-trainable"],
                                 [[f"{p['total']:,}", f"{p['trainable']:,}", f"{p['non_trainable']:,}"]])))
        if history["model"] in summaries_text:
            blocks.append(("pre", summaries_text[history["model"]]))
    blocks.append(("h2", "Per-epoch metrics"))
    for history in histories:
        blocks.append(("h3", f"{history['model']}, seed {history.get('seed', run['seed'])}" if per_seed
                       else history["model"]))
        rows = [[str(e["epoch"]), _fmt(e.get("loss")), _fmt_pct(e.get("accuracy")),
                 _fmt(e.get("val_loss")), _fmt_pct(e.get("val_accuracy")), f"{e['time_s']:.1f}"]
                for e in history["epochs"]]
        blocks.append(("table", (["epoch", "train loss", "train acc.", "test loss", "test acc.", "time (s)"], rows)))
    blocks.append(("h2", "Data"))
    blocks.append(("img", (figures["samples"], "Training samples")))
    return blocks


# Characters that Markdown reads as markup (or as HTML) anywhere in a line.
_MARKDOWN_SPECIAL = "\\`*_[]<>|~#"


def markdown_escape(text):
    """`text` as literal Markdown: markup characters (HTML's `<` and `>`
    too) backslash-escaped, `&` as an entity, line breaks as spaces (names
    and paths are data)."""
    text = str(text).replace("&", "&amp;").replace("\r", " ").replace("\n", " ")
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def _markdown_bold(text):
    """A paragraph whose only markup is `**bold**`, the rest escaped."""
    return "**".join(markdown_escape(part) for part in text.split("**"))


def _fence(text):
    """A code fence longer than any run of backticks in `text`."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_markdown(blocks):
    out = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + markdown_escape(payload))
        elif kind == "p":
            out.append(_markdown_bold(payload))
        elif kind == "pre":
            fence = _fence(payload)
            out.append(f"{fence}\n{payload}\n{fence}")
        elif kind == "table":
            header, rows = payload
            lines = ["| " + " | ".join(map(markdown_escape, header)) + " |",
                     "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(markdown_escape, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            path, alt = payload
            out.append(f"![{markdown_escape(alt)}]({os.path.basename(path)})")
    return "\n\n".join(out) + "\n"


def _inline_bold(text):
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks):
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_bold(payload)}</p>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(payload)}</pre>")
        elif kind == "table":
            header, rows = payload
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
            rows_html = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>")
        elif kind == "img":
            path, alt = payload
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" />'
                        f"<figcaption>{html.escape(alt)}</figcaption></figure>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}"
        "img{max-width:100%}figcaption{color:#666;font-size:90%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8" />'
        "<title>Involution vs convolution on CIFAR-10</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def one_per_class(labels, count=10):
    """Indices of the first image of each class (then the next ones), `count` in all."""
    labels = np.asarray(labels)
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    chosen = set(firsts)
    rest = [i for i in range(len(labels)) if i not in chosen]
    return (firsts + rest)[:count]


def write_report(output_dir, run, histories, models, dataset, summaries=None):
    """Writes the PNGs, `report.md` and `report.html` into `output_dir`.

    Args:
        output_dir: the run's folder.
        run: the run's settings and environment (see `involution.app.compare`).
        histories: the models' history dicts.
        models: `{name: trained keras.Model}`.
        dataset: the `Dataset` trained on (for sample and kernel images).
        summaries: `{name: text}` per-layer summaries; by default
            `model.summary()` of `models`.
    """
    figures = {
        "curves": os.path.join(output_dir, CURVES_PNG),
        "samples": os.path.join(output_dir, SAMPLES_PNG),
    }
    if run.get("per_seed_folders"):
        plot_seed_curves(histories, figures["curves"])
    else:
        plot_curves(histories, figures["curves"])
    # Image-folder sources are stored class by class: show a random sample.
    sample = np.random.default_rng(run.get("seed", 0)).permutation(len(dataset.x_train))[:25]
    plot_samples(dataset.x_train[sample], dataset.y_train[sample], dataset.class_names, figures["samples"])
    involution_models = [m for m in models.values() if involution_layers(m)]
    if involution_models:
        figures["kernels"] = os.path.join(output_dir, KERNELS_PNG)
        shown = one_per_class(dataset.y_test)
        plot_kernels(involution_models, dataset.x_test[shown], figures["kernels"])
    if summaries is None:
        summaries = {name: model_summary_text(model) for name, model in models.items()}
    blocks = build_blocks(run, histories, summaries, figures)
    atomic_write_json(os.path.join(output_dir, "summary.json"),
                      {"settings": study_settings(run), "models": seed_statistics(histories)})
    atomic_write_text(os.path.join(output_dir, "report.md"), render_markdown(blocks))
    atomic_write_text(os.path.join(output_dir, "report.html"), render_html(blocks))
    return blocks
