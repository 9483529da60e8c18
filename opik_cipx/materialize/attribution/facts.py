"""What a request carries, domain by domain, as JSON-ready span metadata.

The shape follows comet-ml/opik-claude-code-plugin's `docs/metadata-schema.md`: one key per
domain, a `summary` object with totals beside the detail list, so dashboards can read both
products. Every `chars` / `*_chars` number counts characters of the request body (JSON text,
escapes included), the unit of `Attribution.buckets`, so details add up to bucket totals.

`user_prompt.text` is the typed prompt of the current turn: the plain user text of the last
user message without tool results (None when that message holds none, e.g. a slash command).

Text values — `user_prompt.text`, `slash_commands.by_command[].args` and
`tool_io.by_tool[].sample_chars` (a sample of the tool's latest result, despite the name the
reference gave it) — are the only content in facts; `redacted` drops exactly those.
"""

import copy
import hashlib

from opik_cipx.materialize.attribution.model import (
    AGENTS,
    MEMORY,
    SKILLS,
    SLASH_COMMAND,
    TOOLS_BUILTIN,
    TOOLS_MCP,
    USER_PROMPT,
)

SAMPLE_CHARS = 200


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Facts:
    """Records the classifiers fill while one body is walked; `to_json` hands them out once."""

    def __init__(self) -> None:
        self.builtin_tools: list[str] = []
        self.mcp_servers: dict[str, dict] = {}
        self.skill_menu: list[str] = []
        self.skills_loaded: list[dict] = []
        self.memory_files: list[dict] = []
        self.agents_listed: list[str] = []
        self.agents_custom: list[dict] = []
        self.commands: list[dict] = []
        self.prompts: list[dict] = []
        self.turn_prompts: list[dict] = []  # prompts of the last user message without tool results
        self.tool_io: dict[str, dict] = {}
        self.compaction = {
            "request": False,
            "continued_summary": False,
            "summary_chars": 0,
            "prompt_chars": 0,
            "reattached_chars": 0,
        }

    def mcp_server(self, server: str) -> dict:
        return self.mcp_servers.setdefault(server, {"tools": [], "chars": 0, "instructions_chars": 0})

    def tool(self, name: str) -> dict:
        return self.tool_io.setdefault(
            name, {"calls": 0, "input_chars": 0, "result_chars": 0, "errors": 0, "sample_chars": ""}
        )

    def copy(self, also: dict | None = None) -> tuple["Facts", dict | None]:
        """A copy that walking on changes without changing this one, and the copy of `also`.

        A record that only the message creating it tallies (a prompt, a loaded skill, a memory
        file, a command) is shared: it is final once its message is painted. Copied are the
        records later messages still change: `tool_io` and `mcp_servers` entries, `compaction`,
        and `also` — a command of `commands` whose output may come in a later message (the
        conversation's last local command).
        """
        new = Facts.__new__(Facts)
        new.builtin_tools = list(self.builtin_tools)
        new.mcp_servers = {name: {**record, "tools": list(record["tools"])}
                           for name, record in self.mcp_servers.items()}
        new.skill_menu = list(self.skill_menu)
        new.skills_loaded = list(self.skills_loaded)
        new.memory_files = list(self.memory_files)
        new.agents_listed = list(self.agents_listed)
        new.agents_custom = list(self.agents_custom)
        new.commands = list(self.commands)
        also_copy = None
        if also is not None:
            also_copy = dict(also)
            new.commands = [also_copy if record is also else record for record in self.commands]
        new.prompts = list(self.prompts)
        new.turn_prompts = list(self.turn_prompts)
        new.tool_io = {name: dict(record) for name, record in self.tool_io.items()}
        new.compaction = dict(self.compaction)
        return new, also_copy

    def absorb(self, other: "Facts") -> bool:
        """Add `other` — the facts of a later part of the same body, walked on fresh Facts — as if
        that part had been walked on these. Only for parts that add to lists and to MCP server
        records (system, tools, request parameters); False, nothing changed, for any other."""
        fresh = Facts()
        if (other.commands or other.prompts or other.turn_prompts or other.tool_io
                or other.compaction != fresh.compaction):
            return False
        self.builtin_tools += other.builtin_tools
        for name, record in other.mcp_servers.items():
            mine = self.mcp_server(name)
            mine["tools"] += record["tools"]
            mine["chars"] += record["chars"]
            mine["instructions_chars"] += record["instructions_chars"]
        self.skill_menu += other.skill_menu
        self.skills_loaded += other.skills_loaded
        self.memory_files += other.memory_files
        self.agents_listed += other.agents_listed
        self.agents_custom += other.agents_custom
        return True

    def to_json(self, buckets: dict[str, int], by_label: dict[str, dict[str, int]]) -> dict:
        turn = self.turn_prompts
        tool_io = self.tool_io
        return {
            "tools": {
                "summary": {
                    "builtin_count": len(self.builtin_tools),
                    "builtin_chars": buckets[TOOLS_BUILTIN],
                    "mcp_count": sum(len(server["tools"]) for server in self.mcp_servers.values()),
                    "mcp_chars": buckets[TOOLS_MCP],
                    "server_count": len(self.mcp_servers),
                },
                "builtin": list(self.builtin_tools),
                "mcp": {"by_server": self.mcp_servers},
            },
            "skills": {
                "summary": {
                    "menu_count": len(self.skill_menu),
                    "menu_chars": by_label[SKILLS].get("menu", 0),
                    "loaded_count": len(self.skills_loaded),
                    "loaded_chars": sum(skill["chars"] for skill in self.skills_loaded),
                },
                "menu": list(self.skill_menu),
                "loaded": self.skills_loaded,
            },
            "memory": {
                "summary": {"file_count": len(self.memory_files), "chars": buckets[MEMORY]},
                "files": self.memory_files,
            },
            "agents": {
                "summary": {
                    "listed_count": len(self.agents_listed),
                    "list_chars": by_label[AGENTS].get("list", 0),
                    "custom_count": len(self.agents_custom),
                    "custom_chars": sum(agent["chars"] for agent in self.agents_custom),
                },
                "listed": list(self.agents_listed),
                "custom": self.agents_custom,
            },
            "slash_commands": {
                "summary": {"count": len(self.commands), "chars": buckets[SLASH_COMMAND]},
                "by_command": self.commands,
            },
            "compaction": self.compaction,
            "user_prompt": {
                "summary": {"count": len(self.prompts), "chars": buckets[USER_PROMPT]},
                "text": "\n\n".join(prompt["text"] for prompt in turn) if turn else None,
                "text_chars": sum(prompt["text_chars"] for prompt in turn),
            },
            "tool_io": {
                "summary": {
                    "calls": sum(tool["calls"] for tool in tool_io.values()),
                    "input_chars": sum(tool["input_chars"] for tool in tool_io.values()),
                    "result_chars": sum(tool["result_chars"] for tool in tool_io.values()),
                    "errors": sum(tool["errors"] for tool in tool_io.values()),
                },
                "by_tool": tool_io,
            },
        }


def redacted(facts: dict) -> dict:
    """A copy of `facts` without text values (prompt text, command args, tool samples); counts stay."""
    out = copy.deepcopy(facts)
    out["user_prompt"].pop("text", None)
    for command in out["slash_commands"]["by_command"]:
        command.pop("args", None)
    for tool in out["tool_io"]["by_tool"].values():
        tool.pop("sample_chars", None)
    return out
