"""Build the loss-comparison dashboard in W&B, as code (needs ``pip install wandb-workspaces`` and a login).

One section per dataset/model/fraction group of the project's runs (the W&B config keys ``dataset``,
``model``, ``fraction`` that :class:`lightning_seg.cli.SegmentationCLI` writes into every run from
:class:`lightning_seg.run.RunKeys`), with runs grouped by ``config.loss`` and ``config.cell`` so each loss is
one line (mean over folds and seeds, min-max band), one colour per loss, and runs of other settings are never
averaged together. Panels: ``train/p_bar``, ``train/dice_coef``, ``train/alpha``, ``train/ce``, ``train/dice_loss`` per
step, ``val/miou`` per validation step, ``test/miou`` per loss as bars, and the ``val/overlays`` images.

    python scripts/wandb_report.py --entity ME --project lightning-seg              # a report (prints its URL)
    python scripts/wandb_report.py --entity ME --project lightning-seg --workspace  # a saved workspace view
    python scripts/wandb_report.py --entity ME --project lightning-seg --group synthetic/unet/1 --dry-run

``--group DATA/MODEL/FRACTION`` (repeatable) names the groups instead of reading them from the project's
runs; ``--dry-run`` builds the objects and prints them without contacting W&B (``--entity`` required).
See docs/dashboards.md.
"""

from __future__ import annotations

import argparse
import sys

from lightning_seg.run import group_name

STEP_METRICS = ["train/p_bar", "train/dice_coef", "train/alpha", "train/ce", "train/dice_loss"]


def groups_from_project(entity: str, project: str) -> list[tuple[str, str, float]]:
    """The distinct ``(dataset, model, fraction)`` of the project's runs."""
    import wandb

    found = set()
    for run in wandb.Api().runs(f"{entity}/{project}"):
        config = run.config
        if {"dataset", "model", "fraction"} <= set(config):
            found.add((config["dataset"], config["model"], float(config["fraction"])))
    return sorted(found)


def panels(wr) -> list:
    """The panels of one group (``wr`` is ``wandb_workspaces.reports.v2``)."""
    # against the step: an epoch holds several validations, and a different number of steps in every fraction
    out = [
        wr.LinePlot(title=m, x="trainer/global_step", y=[m], groupby_aggfunc="mean", groupby_rangefunc="minmax")
        for m in [*STEP_METRICS, "val/miou"]
    ]
    out.append(wr.BarPlot(title="test/miou", metrics=["test/miou"], groupby_aggfunc="mean", groupby_rangefunc="stddev"))
    out.append(wr.MediaBrowser(title="val/overlays", media_keys=["val/overlays"], num_columns=2))
    return out


def runset(wr, expr, entity: str, project: str, dataset: str, model: str, fraction: float):
    return wr.Runset(
        entity=entity,
        project=project,
        name=group_name(dataset, model, fraction),
        filters=[expr.Config("dataset") == dataset, expr.Config("model") == model, expr.Config("fraction") == fraction],
        groupby=["config.loss", "config.cell"],
    )


def build_report(entity: str, project: str, groups: list[tuple[str, str, float]]):
    import wandb_workspaces.expr as expr
    import wandb_workspaces.reports.v2 as wr

    blocks = [
        wr.H1("Segmentation losses compared"),
        wr.P(
            "One section per dataset / model / training fraction; one line per loss (config.loss), "
            "mean over folds and seeds with min-max band. Built by scripts/wandb_report.py."
        ),
    ]
    for dataset, model, fraction in groups:
        blocks.append(wr.H2(f"{dataset} / {model} / fraction {fraction:g}"))
        blocks.append(
            wr.PanelGrid(runsets=[runset(wr, expr, entity, project, dataset, model, fraction)], panels=panels(wr))
        )
    return wr.Report(
        entity=entity, project=project, title="lightning-seg: loss comparison", blocks=blocks, width="fluid"
    )


def build_workspace(entity: str, project: str, groups: list[tuple[str, str, float]]):
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=group_name(d, m, f), panels=panels(wr), is_open=i == 0) for i, (d, m, f) in enumerate(groups)
    ]
    return ws.Workspace(
        name="Loss comparison",
        entity=entity,
        project=project,
        sections=sections,
        # Group runs by loss in the run selector: one colour per loss in every panel.
        runset_settings=ws.RunsetSettings(
            groupby=[ws.Config(key) for key in ("dataset", "model", "fraction", "loss", "cell")]
        ),
    )


def parse_group(text: str) -> tuple[str, str, float]:
    """``DATA/MODEL/frac<f>`` (:func:`lightning_seg.run.group_name`) or ``DATA/MODEL/<f>``."""
    dataset, model, fraction = text.rsplit("/", 2)
    return dataset, model, float(fraction.removeprefix("frac"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True)
    parser.add_argument("--project", default="lightning-seg")
    parser.add_argument("--group", action="append", type=parse_group, help="DATA/MODEL/FRACTION, repeatable")
    parser.add_argument("--workspace", action="store_true", help="save a workspace view instead of a report")
    parser.add_argument("--dry-run", action="store_true", help="build and print, do not save")
    args = parser.parse_args(argv)
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        sys.exit("this script needs `pip install wandb-workspaces`")
    groups = args.group or groups_from_project(args.entity, args.project)
    if not groups:
        sys.exit(f"no run with dataset/model/fraction config keys in {args.entity}/{args.project}")
    view = (build_workspace if args.workspace else build_report)(args.entity, args.project, groups)
    if args.dry_run:
        print(view)
        return
    view.save()
    print(view.url)


if __name__ == "__main__":
    main()
