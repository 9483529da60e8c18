"""The exact USD cost of one Messages call, from its `usage`, its start time and a dated price table.

Prices are data (docs/PRICING.md): `prices.json` holds absolute USD per million tokens for each
model, and `[prices."<model>"]` tables in config.toml add models or override what the package
says; both are read by the same parser (`config.parse_price_row`; config.toml's tables once, when
the settings load). The rules are Anthropic's published ones:
- cache writes are split by TTL (all 5-minute writes when the split is absent; an iteration without
  one takes the top level's proportion);
- a model's rates can change on a date (`changes`): a call is priced at the rates in force when
  it started, so replaying an old capture gives the cost it had then;
- a price tier (`tiers`) reprices the whole request once its prompt (input + cache reads + cache
  writes) exceeds the tier's threshold (Sonnet 4/4.5 long context, Haiku 5.5 over 100K);
- with `usage.iterations` (server-side compaction, server tool loops) every billed iteration is
  priced on its own, its tier chosen by its own prompt, and the top-level tokens are not added
  again (they are the sum of the non-compaction iterations);
- fast mode and US-only inference multiply every token rate; each web search has a flat fee.
A model id the table does not know is priced as the newest known model of its family (opus,
sonnet, haiku, fable, mythos) and says so in `estimated_from`; only an id of no known family
costs None, with the reason. A cost is never made up as 0.
"""

import bisect
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from opik_cipx.config import PRICE_RATE_KEYS as RATE_KEYS
from opik_cipx.config import parse_price_row

FAMILIES = ("opus", "sonnet", "haiku", "fable", "mythos")
_TOKENS_PER_MTOK = 1_000_000
_INPUT_SIDE = ("input", "cache_write_5m", "cache_write_1h", "cache_read")

_CONTEXT_SUFFIX = re.compile(r"\[[^\]]*\]$")  # claude-opus-4-8[1m]
_PLATFORM_PREFIX = re.compile(r"^(?:[a-z-]+\.)?anthropic\.")  # Bedrock: us.anthropic.claude-...
_VERSION_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")  # Bedrock: ...-v1:0
_DATE_SUFFIX = re.compile(r"(?:[-@]\d{8}|-latest)$")  # -20251001, Vertex @20251001, -latest


@dataclass(frozen=True)
class Tier:
    name: str
    above_prompt_tokens: int  # the whole request pays `rates` once its prompt exceeds this
    rates: dict[str, float]


@dataclass(frozen=True)
class Rates:
    """What a model costs over one period of time."""

    effective_from: str | None  # the date these took effect; None: since the model's start
    from_ns: int | None
    rates: dict[str, float]  # RATE_KEYS -> USD per million tokens
    fast_multiplier: float | None = None  # None: no fast mode
    tiers: tuple[Tier, ...] = ()  # lowest threshold first

    def tier_for(self, prompt_tokens: int) -> Tier | None:
        """The tier with the highest threshold the prompt exceeds, if any."""
        return next((tier for tier in reversed(self.tiers) if prompt_tokens > tier.above_prompt_tokens), None)


@dataclass(frozen=True)
class ModelPrice:
    periods: tuple[Rates, ...]  # oldest first; the first has from_ns None
    source: str | None = None
    checked: str | None = None
    secondary: str | None = None  # which rates come only from secondary sources
    note: str | None = None
    unconfirmed: bool = False
    overridden: bool = False  # a [prices] table in config.toml changed it

    def at(self, at_ns: int) -> Rates:
        """The rates in force at `at_ns` (epoch ns)."""
        starts = [period.from_ns for period in self.periods[1:] if period.from_ns is not None]  # all but the first
        return self.periods[bisect.bisect_right(starts, at_ns)]


@dataclass(frozen=True)
class Resolution:
    name: str  # the normalised id
    priced_as: str | None  # the table row that prices it; None: unpriced
    price: ModelPrice | None
    reason: str | None = None  # why it is unpriced


@dataclass(frozen=True)
class PriceTable:
    effective_date: str
    models: dict[str, ModelPrice]
    aliases: dict[str, str]
    web_search_usd_per_1000: float
    inference_geo_multipliers: dict[str, float]  # lower-case region -> multiplier
    newest: dict[str, str] = field(default_factory=dict)  # family -> its newest model in the table

    def lookup(self, model: str) -> tuple[str, ModelPrice | None]:
        """The normalised model name and its own row, None when the table does not list it."""
        name = _canonical(model, self.aliases)
        return name, self.models.get(name)

    def resolve(self, model: str) -> Resolution:
        """The row that prices `model`: its own, else the newest of its family, else none and why."""
        name, price = self.lookup(model)
        if price is not None:
            return Resolution(name, name, price)
        family = model_family(name)
        if family is None:
            why = "not a Claude model id" if not name.startswith("claude") else \
                f"no known family ({', '.join(FAMILIES)}) in the id"
            return Resolution(name, None, None, f"{why}: add [prices.\"{name}\"] with all five rates to config.toml")
        newest = self.newest.get(family)
        if newest is None:
            return Resolution(name, None, None, f"the price table has no {family} model to estimate from")
        return Resolution(name, newest, self.models[newest])


@dataclass(frozen=True)
class Cost:
    model: str | None
    unknown_model: bool  # the table has no row for this id (estimated or unpriced)
    price_table_date: str
    estimated_from: str | None = None  # the row an unknown id was priced as (newest of its family)
    unpriced_reason: str | None = None  # why total_usd is None
    rates_effective_from: str | None = None  # the dated change in force at the call's start
    total_usd: float | None = None
    input_side_usd: float | None = None  # input + cache writes + cache reads: what request buckets share
    output_usd: float | None = None
    web_search_usd: float | None = None
    breakdown: dict[str, float] | None = None  # USD per token class, plus web_search
    rates: dict[str, float] | None = None  # applied to the (final) iteration, after tier and multipliers
    tier: str | None = None  # the highest price tier the call (any iteration of it) paid
    modifiers: tuple[str, ...] = ()
    iterations: tuple[dict[str, Any], ...] | None = None  # per billed iteration, when usage lists them

    def to_json(self) -> dict:
        out = {**asdict(self), "modifiers": list(self.modifiers)}
        out["iterations"] = list(self.iterations) if self.iterations is not None else None
        return out


def normalize_model(model: str) -> str:
    """`claude-haiku-4-5-20251001`, `claude-opus-4-8[1m]`, `us.anthropic.claude-...-v1:0` -> the bare id."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _CONTEXT_SUFFIX.sub("", name)
    name = _PLATFORM_PREFIX.sub("", name)
    name = _VERSION_SUFFIX.sub("", name)
    return _DATE_SUFFIX.sub("", name)


def model_family(name: str) -> str | None:
    """`opus` for `claude-opus-6-preview` or `claude-3-opus`; None for an id of no known family."""
    parts = name.split("-")
    if parts[0] != "claude":
        return None
    return next((part for part in parts[1:] if part in FAMILIES), None)


def model_version(name: str) -> tuple[int, ...]:
    """The version numbers in an id, to order a family: `claude-opus-5-5` (5, 5) > `claude-opus-5` (5,)."""
    return tuple(int(part) for part in name.split("-") if part.isdigit())


def load_price_table(overrides: dict[str, dict[str, Any]] | None = None) -> PriceTable:
    """The packaged table with the `[prices]` overrides from config.toml applied: `overrides` is
    the `prices` setting, already parsed (`config.parse_price_overrides`).

    An override of a packaged model wins at every date over what it names (single rates,
    `fast_multiplier`, the whole `tiers` list); its `changes` apply from their dates on top.
    A model the package does not know needs all five rates: ValueError naming it otherwise.
    """
    import pkgutil  # read through the module's loader (a directory or the zipapp), once a process

    packaged = pkgutil.get_data(__package__, "prices.json")  # importlib.resources would load zipfile and more
    assert packaged is not None  # the loader of a package on disk or in a zip reads files
    data = json.loads(packaged.decode("utf-8"))
    aliases = data["aliases"]
    rows = {name: [parse_price_row(f"prices.json models.{name}", row)] for name, row in data["models"].items()}
    overridden = set()
    for raw_name, row in (overrides or {}).items():
        name = _canonical(raw_name, aliases)
        if name not in rows:
            missing = [key for key in RATE_KEYS if key not in row.get("rates", {})]
            if missing:
                raise ValueError(f"prices.{raw_name}: a model without a packaged price needs every rate; "
                                 f"missing {', '.join(missing)}")
            rows[name] = []
        rows[name].append(row)
        overridden.add(name)
    models = {name: _model_price(layers, name in overridden) for name, layers in rows.items()}
    newest: dict[str, str] = {}
    for name in models:
        family = model_family(name)
        if family and (family not in newest or model_version(name) > model_version(newest[family])):
            newest[family] = name
    return PriceTable(
        effective_date=data["effective_date"],
        models=models,
        aliases=aliases,
        web_search_usd_per_1000=float(data["web_search_usd_per_1000"]),
        inference_geo_multipliers={k.lower(): float(v) for k, v in data["inference_geo_multipliers"].items()},
        newest=newest,
    )


def price_call(model: str | None, usage: dict | None, table: PriceTable, at_ns: int) -> Cost:
    """The cost of one call that started at `at_ns` (epoch ns); every USD field is None when it
    cannot be priced, and `unpriced_reason` says why."""
    if not isinstance(model, str) or not model.strip():
        return Cost(model=None, unknown_model=True, price_table_date=table.effective_date,
                    unpriced_reason="no model id in the response or the request")
    found = table.resolve(model)
    estimated = found.priced_as if found.priced_as != found.name else None
    base = Cost(model=found.name, unknown_model=found.priced_as != found.name, estimated_from=estimated,
                price_table_date=table.effective_date)
    if found.price is None:
        return replace(base, unpriced_reason=found.reason)
    if not isinstance(usage, dict):
        return replace(base, unpriced_reason="the response carries no usage")
    rates = found.price.at(at_ns)
    listed = usage.get("iterations")
    parts = [it for it in listed if isinstance(it, dict)] if isinstance(listed, list) else []
    modifiers: list[str] = []
    if estimated:
        modifiers.append(f"estimated: {found.name} is not in the price table, priced as {estimated}")
    if parts:
        modifiers.append(f"usage.iterations: {len(parts)} billed iteration(s) priced one by one; "
                         "the top-level tokens are not added again")
    breakdown = dict.fromkeys(RATE_KEYS, 0.0)
    details, tiers, applied = [], [], {}
    top_split = write_split(usage) if parts else None  # for an iteration that lacks its own
    for index, part in enumerate(parts or [usage]):
        part_rates = rates
        detail: dict[str, Any] = {"type": str(part.get("type") or "message")} if parts else {}
        if parts and isinstance(part.get("model"), str) and part["model"] and \
                _canonical(part["model"], table.aliases) != found.name:
            other = table.resolve(part["model"])  # an advisor or fallback model served this iteration
            if other.price is None:
                return replace(base, unpriced_reason=f"usage.iterations[{index}] ran on {other.name}: {other.reason}")
            part_rates = other.price.at(at_ns)
            detail.update(model=other.name, priced_as=other.priced_as)
        tokens, shared = iteration_tokens(part, top_split)
        if shared:
            modifiers.append(f"usage.iterations[{index}]: no cache_creation split; its writes split 5m/1h "
                             "as the top level's")
        prompt = sum(tokens[key] for key in _INPUT_SIDE)
        tier = part_rates.tier_for(prompt)
        multiplier = _multiplier(part_rates, usage, table, modifiers)
        applied = {key: (tier.rates if tier else part_rates.rates)[key] * multiplier for key in RATE_KEYS}
        usd = {key: tokens[key] * applied[key] / _TOKENS_PER_MTOK for key in RATE_KEYS}
        for key in RATE_KEYS:
            breakdown[key] += usd[key]
        if tier:
            tiers.append(tier)
            where = f" (iteration {index})" if parts else ""
            modifiers.append(f"{tier.name}: prompt over {tier.above_prompt_tokens} tokens{where}")
        if parts:
            details.append({**detail, "tokens": tokens, "prompt_tokens": prompt,
                            "tier": tier.name if tier else None, "usd": sum(usd.values())})
    server_tools = usage.get("server_tool_use")
    searches = count(server_tools.get("web_search_requests")) if isinstance(server_tools, dict) else 0
    breakdown["web_search"] = searches * table.web_search_usd_per_1000 / 1000
    input_side = sum(breakdown[key] for key in _INPUT_SIDE)
    return replace(
        base,
        rates_effective_from=rates.effective_from,
        total_usd=input_side + breakdown["output"] + breakdown["web_search"],
        input_side_usd=input_side,
        output_usd=breakdown["output"],
        web_search_usd=breakdown["web_search"],
        breakdown=breakdown,
        rates={**applied, "web_search_per_1000": table.web_search_usd_per_1000},
        tier=max(tiers, key=lambda tier: tier.above_prompt_tokens).name if tiers else None,
        modifiers=tuple(dict.fromkeys(modifiers)),
        iterations=tuple(details) if parts else None,
    )


def _multiplier(rates: Rates, usage: dict, table: PriceTable, modifiers: list[str]) -> float:
    """Fast mode times US-only inference, noting each in `modifiers`."""
    multiplier = 1.0
    if usage.get("speed") == "fast":
        if rates.fast_multiplier:
            multiplier *= rates.fast_multiplier
            modifiers.append(f"fast x{rates.fast_multiplier:g}")
        else:
            modifiers.append("fast: this model has no fast mode at the call's date; standard rates used")
    geo = usage.get("inference_geo")
    geo_multiplier = table.inference_geo_multipliers.get(geo.strip().lower()) if isinstance(geo, str) else None
    if geo_multiplier:
        multiplier *= geo_multiplier
        modifiers.append(f"inference_geo={geo} x{geo_multiplier:g}")
    return multiplier


def token_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """Tokens per rate class. Writes not covered by the TTL split are 5-minute writes."""
    split = usage.get("cache_creation")
    split = split if isinstance(split, dict) else {}
    written_1h = count(split.get("ephemeral_1h_input_tokens"))
    written_5m = max(
        count(split.get("ephemeral_5m_input_tokens")),
        count(usage.get("cache_creation_input_tokens")) - written_1h,
    )
    return {
        "input": count(usage.get("input_tokens")),
        "cache_write_5m": written_5m,
        "cache_write_1h": written_1h,
        "cache_read": count(usage.get("cache_read_input_tokens")),
        "output": count(usage.get("output_tokens")),
    }


def iteration_tokens(part: dict, top_split: tuple[int, int] | None) -> tuple[dict[str, int], bool]:
    """A billed iteration's tokens as `price_call` prices them, and whether its cache writes were
    shared 5m/1h as the top level's `top_split` (`write_split`) for want of a split of its own."""
    tokens = token_counts(part)
    if top_split and tokens["cache_write_5m"] and not isinstance(part.get("cache_creation"), dict):
        return _split_like(tokens, top_split), True
    return tokens, False


def write_split(usage: dict) -> tuple[int, int] | None:
    """The (5-minute, 1-hour) cache writes of a usage that has a `cache_creation` split and writes; else None."""
    if not isinstance(usage.get("cache_creation"), dict):
        return None
    tokens = token_counts(usage)
    split = (tokens["cache_write_5m"], tokens["cache_write_1h"])
    return split if any(split) else None


def _split_like(tokens: dict[str, int], split: tuple[int, int]) -> dict[str, int]:
    """`tokens` with its cache writes shared between 5m and 1h in the proportion of `split`: the 1-hour
    share rounded half up in integers, the 5-minute share the rest, so the two add up to the writes exactly."""
    written = tokens["cache_write_5m"] + tokens["cache_write_1h"]
    total = split[0] + split[1]
    written_1h = (2 * written * split[1] + total) // (2 * total)
    return {**tokens, "cache_write_5m": written - written_1h, "cache_write_1h": written_1h}


def _canonical(model: str, aliases: dict[str, str]) -> str:
    name = normalize_model(model)
    return aliases.get(name, name)


def count(value: object) -> int:
    """A token count as priced: a positive finite number, else 0 (JSON allows `Infinity`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if 0 < value < math.inf else 0


def _model_price(layers: list[dict], overridden: bool) -> ModelPrice:
    """The periods of a model from its rows (packaged first, then the override): at each date the
    layers apply in order, each with its own changes up to that date."""
    starts = sorted({(change["at_ns"], change["effective_from"]) for layer in layers
                     for change in layer.get("changes", ())})
    periods = []
    for from_ns, label in [(None, None), *starts]:
        fields: dict[str, Any] = {"rates": {}, "fast_multiplier": None, "tiers": []}
        for layer in layers:
            fields = _apply(fields, layer)
            for change in layer.get("changes", ()):
                if from_ns is not None and change["at_ns"] <= from_ns:
                    fields = _apply(fields, change)
        tiers = tuple(Tier(t["name"], t["above_prompt_tokens"], t["rates"]) for t in fields["tiers"])
        periods.append(Rates(label, from_ns, fields["rates"], fields["fast_multiplier"], tiers))
    notes = {key: value for layer in layers for key, value in layer.items()
             if key in ("source", "checked", "secondary", "note", "unconfirmed")}
    return ModelPrice(periods=tuple(periods), overridden=overridden, **notes)


def _apply(fields: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    out = {**fields, "rates": {**fields["rates"], **row.get("rates", {})}}
    for key in ("fast_multiplier", "tiers"):
        if key in row:
            out[key] = row[key]
    return out
