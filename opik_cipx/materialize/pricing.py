"""The exact USD cost of one Messages call, from its `usage` and a dated price table.

Prices are data: `prices.json` holds absolute USD per million tokens for each model, and
`[prices."<model>"]` tables in config.toml add models or override single rates. The rules
are Anthropic's published ones: cache writes are split by TTL (all 5-minute writes when the
split is absent), a model with a long-context rate reprices the whole request once its
prompt (input + cache reads + cache writes) exceeds the threshold, fast mode and US-only
inference multiply every token rate, and each web search has a flat fee. A model the table
does not know costs None and says so; it is never priced at 0.
"""

import json
import re
from dataclasses import asdict, dataclass, replace
from importlib import resources

from opik_cipx.config import PRICE_RATE_KEYS as RATE_KEYS
from opik_cipx.config import parse_price_overrides

_TOKENS_PER_MTOK = 1_000_000

_CONTEXT_SUFFIX = re.compile(r"\[[^\]]*\]$")  # claude-opus-4-8[1m]
_PLATFORM_PREFIX = re.compile(r"^(?:[a-z-]+\.)?anthropic\.")  # Bedrock: us.anthropic.claude-...
_VERSION_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")  # Bedrock: ...-v1:0
_DATE_SUFFIX = re.compile(r"(?:[-@]\d{8}|-latest)$")  # -20251001, Vertex @20251001, -latest


@dataclass(frozen=True)
class ModelPrice:
    rates: dict[str, float]  # RATE_KEYS -> USD per million tokens
    fast_multiplier: float | None = None
    long_context_above: int | None = None  # prompt tokens beyond which long_context_rates apply
    long_context_rates: dict[str, float] | None = None


@dataclass(frozen=True)
class PriceTable:
    effective_date: str
    models: dict[str, ModelPrice]
    aliases: dict[str, str]
    web_search_usd_per_1000: float
    inference_geo_multipliers: dict[str, float]

    def lookup(self, model: str) -> tuple[str, ModelPrice | None]:
        """The normalised model name and its price, None when the table does not know it."""
        name = _canonical(model, self.aliases)
        return name, self.models.get(name)


@dataclass(frozen=True)
class Cost:
    model: str | None
    unknown_model: bool
    price_table_date: str
    total_usd: float | None = None
    input_side_usd: float | None = None  # input + cache writes + cache reads: what request buckets share
    output_usd: float | None = None
    web_search_usd: float | None = None
    breakdown: dict[str, float] | None = None  # USD per token class, plus web_search
    rates: dict[str, float] | None = None  # the rates applied, after long context and multipliers
    long_context: bool = False
    modifiers: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self), "modifiers": list(self.modifiers)}


def normalize_model(model: str) -> str:
    """`claude-haiku-4-5-20251001`, `claude-opus-4-8[1m]`, `us.anthropic.claude-...-v1:0` -> the bare id."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _CONTEXT_SUFFIX.sub("", name)
    name = _PLATFORM_PREFIX.sub("", name)
    name = _VERSION_SUFFIX.sub("", name)
    return _DATE_SUFFIX.sub("", name)


def load_price_table(overrides: dict | None = None) -> PriceTable:
    """The packaged table with the `[prices]` overrides from config.toml applied.

    An override of a packaged model replaces only the rates it names; the model's long-context
    rates and fast-mode multiplier stay. A model the package does not know needs all five rates.
    Raises ValueError naming the bad key, e.g. `prices.claude-foo-5.output: expected a number`.
    """
    data = json.loads(resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8"))
    models = {name: _packaged_price(row) for name, row in data["models"].items()}
    _apply_overrides(models, data["aliases"], {} if overrides is None else overrides)
    return PriceTable(
        effective_date=data["effective_date"],
        models=models,
        aliases=data["aliases"],
        web_search_usd_per_1000=float(data["web_search_usd_per_1000"]),
        inference_geo_multipliers=data["inference_geo_multipliers"],
    )


def price_call(model: str | None, usage: dict | None, table: PriceTable) -> Cost:
    """The cost of one call; every USD field is None when the model or the usage is unknown."""
    name, price = table.lookup(model) if isinstance(model, str) and model else (None, None)
    if price is None or not isinstance(usage, dict):
        return Cost(model=name, unknown_model=price is None, price_table_date=table.effective_date)
    tokens = token_counts(usage)
    prompt = tokens["input"] + tokens["cache_write_5m"] + tokens["cache_write_1h"] + tokens["cache_read"]
    rates, modifiers = price.rates, []
    long_context = price.long_context_above is not None and prompt > price.long_context_above
    if long_context:
        rates = price.long_context_rates
        modifiers.append(f"long_context: prompt over {price.long_context_above} tokens")
    multiplier = 1.0
    if usage.get("speed") == "fast":
        if price.fast_multiplier:
            multiplier *= price.fast_multiplier
            modifiers.append(f"fast x{price.fast_multiplier:g}")
        else:
            modifiers.append("fast: no multiplier known for this model, standard rates used")
    geo = usage.get("inference_geo")
    geo_multiplier = table.inference_geo_multipliers.get(geo) if isinstance(geo, str) else None
    if geo_multiplier:
        multiplier *= geo_multiplier
        modifiers.append(f"inference_geo={geo} x{geo_multiplier:g}")
    applied = {key: rates[key] * multiplier for key in RATE_KEYS}
    breakdown = {key: tokens[key] * applied[key] / _TOKENS_PER_MTOK for key in RATE_KEYS}
    server_tools = usage.get("server_tool_use")
    searches = _count(server_tools.get("web_search_requests")) if isinstance(server_tools, dict) else 0
    breakdown["web_search"] = searches * table.web_search_usd_per_1000 / 1000
    input_side = sum(breakdown[key] for key in ("input", "cache_write_5m", "cache_write_1h", "cache_read"))
    return Cost(
        model=name,
        unknown_model=False,
        price_table_date=table.effective_date,
        total_usd=input_side + breakdown["output"] + breakdown["web_search"],
        input_side_usd=input_side,
        output_usd=breakdown["output"],
        web_search_usd=breakdown["web_search"],
        breakdown=breakdown,
        rates={**applied, "web_search_per_1000": table.web_search_usd_per_1000},
        long_context=long_context,
        modifiers=tuple(modifiers),
    )


def token_counts(usage: dict) -> dict[str, int]:
    """Tokens per rate class. Writes not covered by the TTL split are 5-minute writes."""
    split = usage.get("cache_creation")
    split = split if isinstance(split, dict) else {}
    written_1h = _count(split.get("ephemeral_1h_input_tokens"))
    written_5m = max(
        _count(split.get("ephemeral_5m_input_tokens")),
        _count(usage.get("cache_creation_input_tokens")) - written_1h,
    )
    return {
        "input": _count(usage.get("input_tokens")),
        "cache_write_5m": written_5m,
        "cache_write_1h": written_1h,
        "cache_read": _count(usage.get("cache_read_input_tokens")),
        "output": _count(usage.get("output_tokens")),
    }


def _canonical(model: str, aliases: dict[str, str]) -> str:
    name = normalize_model(model)
    return aliases.get(name, name)


def _count(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def _packaged_price(row: dict) -> ModelPrice:
    long_context = row.get("long_context")
    return ModelPrice(
        rates={key: float(row[key]) for key in RATE_KEYS},
        fast_multiplier=row.get("fast_multiplier"),
        long_context_above=long_context["above_prompt_tokens"] if long_context else None,
        long_context_rates={key: float(long_context[key]) for key in RATE_KEYS} if long_context else None,
    )


def _apply_overrides(models: dict[str, ModelPrice], aliases: dict[str, str], overrides: object) -> None:
    for raw_name, rates in parse_price_overrides(overrides).items():
        name = _canonical(raw_name, aliases)
        if name in models:
            models[name] = replace(models[name], rates={**models[name].rates, **rates})
            continue
        missing = [key for key in RATE_KEYS if key not in rates]
        if missing:
            raise ValueError(f"prices.{raw_name}: a model without a packaged price needs every rate; "
                             f"missing {', '.join(missing)}")
        models[name] = ModelPrice(rates=rates)
