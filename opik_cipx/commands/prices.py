"""`opik-cipx prices [--json]`: the price table in use and the model ids the running daemon lacks.

The table is built exactly as the daemon builds it (`prices.json` plus the `[prices]` tables of
config.toml), so what this prints is what calls are priced with: per model the rates in force
now, its tiers, its dated changes, fast mode, the source and the date it was checked, and
whether config.toml overrides it. The unknown ids come from the running daemon's admin stats
(docs/ARCHITECTURE.md, "Admin stats"); with no daemon the table is still printed, and says so.
Read-only: never starts, stops or writes anything.
"""

import argparse
import json
import sys
from typing import Any

from opik_cipx.clock import SYSTEM
from opik_cipx.commands.status import unknown_model_lines
from opik_cipx.config import PRICE_RATE_KEYS, Settings
from opik_cipx.control.daemon_control import admin_port, fetch_stats, read_state
from opik_cipx.materialize.pricing import (
    FAMILIES,
    ModelPrice,
    PriceTable,
    Rates,
    load_price_table,
    model_family,
    model_version,
)

COLUMNS = ("input", "5m write", "1h write", "cache read", "output", "fast")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table and the unknown ids as one JSON object")
    parser.set_defaults(config_keys=("prices",))  # reads the price overrides alone (cli.py)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        table = load_price_table(settings.prices)
    except ValueError as exc:
        print(f"opik-cipx: bad setting in config file {settings.config_path}: {exc}", file=sys.stderr)
        return 2
    now_ns = SYSTEM.time_ns()
    daemon = daemon_unknown_models(settings)
    if args.json:
        print(json.dumps(document(table, settings, now_ns, daemon), indent=2, sort_keys=True))
    else:
        print(render(table, settings, now_ns, daemon))
    return 0


def daemon_unknown_models(settings: Settings) -> dict[str, Any]:
    """{running, pid, unknown_models (the stats section or None), note}: what the daemon has seen."""
    state = read_state(settings)
    if state is None:
        return {"running": False, "pid": None, "unknown_models": None,
                "note": "the daemon is not running, so there are no unknown ids to show (`opik-cipx sync` starts it)"}
    stats = fetch_stats(admin_port(settings, state))
    if stats is None:
        return {"running": False, "pid": state["pid"], "unknown_models": None,
                "note": f"the daemon (pid {state['pid']}) does not answer; `opik-cipx status` says why"}
    section = stats.get("unknown_models")
    if not isinstance(section, dict):
        return {"running": True, "pid": stats.get("pid"), "unknown_models": None,
                "note": f"the running daemon ({stats.get('version', '?')}) does not report unknown ids; "
                        "`opik-cipx restart` runs this version"}
    return {"running": True, "pid": stats.get("pid"), "unknown_models": section, "note": None}


def document(table: PriceTable, settings: Settings, now_ns: int, daemon: dict[str, Any]) -> dict[str, Any]:
    """The `--json` object."""
    return {
        "price_table_date": table.effective_date,
        "config_file": str(settings.config_path),
        "overrides": sorted(name for name, price in table.models.items() if price.overridden),
        "models": {name: _model_json(price, now_ns) for name, price in table.models.items()},
        "aliases": table.aliases,
        "newest_by_family": table.newest,
        "web_search_usd_per_1000": table.web_search_usd_per_1000,
        "inference_geo_multipliers": table.inference_geo_multipliers,
        "daemon": daemon,
    }


def _model_json(price: ModelPrice, now_ns: int) -> dict[str, Any]:
    current = price.at(now_ns)
    return {
        **_rates_json(current),
        "periods": [_rates_json(period) for period in price.periods],
        "source": price.source,
        "checked": price.checked,
        "secondary": price.secondary,
        "note": price.note,
        "unconfirmed": price.unconfirmed,
        "overridden": price.overridden,
    }


def _rates_json(rates: Rates) -> dict[str, Any]:
    return {
        "effective_from": rates.effective_from,
        "rates": rates.rates,
        "fast_multiplier": rates.fast_multiplier,
        "tiers": [{"name": t.name, "above_prompt_tokens": t.above_prompt_tokens, "rates": t.rates}
                  for t in rates.tiers],
    }


def render(table: PriceTable, settings: Settings, now_ns: int, daemon: dict[str, Any]) -> str:
    """The human-readable table."""
    width = max(24, *(len(name) + 2 for name in table.models))
    out = [f"price table {table.effective_date}: USD per million tokens, the rates in force now",
           f"{'model':<{width}}" + "".join(f"{column:>11}" for column in COLUMNS) + "  checked"]
    for name in sorted(table.models, key=_order):
        price = table.models[name]
        current = price.at(now_ns)
        flags = [flag for flag, on in (("unconfirmed", price.unconfirmed), ("override", price.overridden)) if on]
        out.append(f"{name:<{width}}{_cells(current)}  {price.checked or '-'}" + "".join(f"  [{f}]" for f in flags))
        for tier in current.tiers:
            rates = " / ".join(f"{tier.rates[key]:g}" for key in PRICE_RATE_KEYS)
            out.append(f"    tier {tier.name}: a prompt over {tier.above_prompt_tokens:,} tokens pays {rates}"
                       " for the whole request")
        if len(price.periods) > 1:
            for index, period in enumerate(price.periods):
                if period is not current:
                    later = price.periods[index + 1].effective_from if index + 1 < len(price.periods) else None
                    out.append(f"    {_span(period.effective_from, later):<{width - 4}}{_cells(period)}")
        for label, value in (("source", price.source), ("secondary", price.secondary), ("note", price.note)):
            if value:
                out.append(f"    {label}: {value}")
    overrides = sorted(name for name, price in table.models.items() if price.overridden)
    out.append("")
    out.append(f"overrides from {settings.config_path}: {', '.join(overrides)}" if overrides
               else f"no [prices] overrides in {settings.config_path}")
    out.append("an id the table does not know is priced as the newest of its family: "
               + ", ".join(f"{family} -> {model}" for family, model in sorted(table.newest.items())))
    geo = ", ".join(f"inference_geo={region} x{factor:g}" for region, factor in table.inference_geo_multipliers.items())
    out.append(f"fast mode and {geo} multiply every token rate; web search ${table.web_search_usd_per_1000:g} "
               "per 1,000 searches; aliases: " + ", ".join(f"{a} -> {b}" for a, b in sorted(table.aliases.items())))
    out.append("")
    section = daemon["unknown_models"]
    if section is None:
        out.append(daemon["note"])
    elif not section.get("ids"):
        out.append(f"unknown model ids seen by the running daemon (pid {daemon['pid']}): none")
    else:
        out.extend(unknown_model_lines(section))
    return "\n".join(out)


def _cells(rates: Rates) -> str:
    fast = f"x{rates.fast_multiplier:g}" if rates.fast_multiplier else "-"
    return "".join(f"{rates.rates[key]:>11g}" for key in PRICE_RATE_KEYS) + f"{fast:>11}"


def _span(start: str | None, end: str | None) -> str:
    if start is None:
        return f"until {end}"
    return f"from {start}" if end is None else f"{start} to {end}"


def _order(name: str) -> tuple:
    """Families together, newest first."""
    family = model_family(name)
    version = (*model_version(name), 0, 0, 0)[:4]
    return (FAMILIES.index(family) if family else len(FAMILIES), tuple(-v for v in version), name)
