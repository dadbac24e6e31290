"""The long-video agent (SPEC §12): tools, one shared conversation, the latent cache reused across turns.

    from transformers import AutoModelForCausalLM, AutoProcessor
    from internvideo3.agent import LatentCacheChat, VideoAgent

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    result = VideoAgent(LatentCacheChat(model, processor), "clip.mp4").run("When does the dog jump?")
"""

from .chat import ContextBudgetError, LatentCacheChat, Reply, cache_keyword, latent_cache_class
from .loop import AgentBudget, AgentResult, VideoAgent, format_transcript, write_transcript
from .parsing import ToolCall, parse_tool_calls
from .tools import ClipSettings, ToolError, ToolRegistry, ToolResult, VideoTools

__all__ = [
    "AgentBudget", "AgentResult", "ClipSettings", "ContextBudgetError", "LatentCacheChat", "Reply", "ToolCall",
    "ToolError", "ToolRegistry", "ToolResult", "VideoAgent", "VideoTools", "cache_keyword", "format_transcript",
    "latent_cache_class", "parse_tool_calls", "write_transcript",
]  # fmt: skip
