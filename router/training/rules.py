"""The keyword and phrase rules the shipped model is trained with.

A rule fires when any of its phrases occurs in the query as a run of tokens (case and
width folded, digits as 0); phrases are matched by hash inside the fast path, with no
Python object per token. Fired rules are features of the model (their weights are
learned) and are reported with every decision.
"""

from __future__ import annotations

from router.model import Rule

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "code",
        (
            "```",
            "def",
            "function",
            "class",
            "import",
            "#include",
            "public static",
            "console.log",
            "select * from",
            "regex",
            "compile",
            "python",
            "javascript",
            "sql",
            "c++",
            "rust",
            "golang",
            "bash",
        ),
    ),
    Rule(
        "error_log",
        (
            "stack trace",
            "stacktrace",
            "traceback",
            "exception",
            "error:",
            "segmentation fault",
            "core dumped",
            "errno",
            "panic:",
            "at line",
            "log file",
            "error log",
        ),
    ),
    Rule(
        "legal",
        (
            "contract",
            "clause",
            "compliance",
            "liability",
            "indemnify",
            "indemnification",
            "gdpr",
            "hipaa",
            "regulation",
            "statute",
            "jurisdiction",
        ),
    ),
    Rule(
        "step_by_step",
        (
            "step by step",
            "step-by-step",
            "show your work",
            "explain why",
            "prove",
            "prove that",
            "derive",
            "justify",
        ),
    ),
    Rule(
        "analysis",
        (
            "analyze",
            "analyse",
            "compare",
            "evaluate",
            "trade-off",
            "tradeoff",
            "trade-offs",
            "pros and cons",
            "critique",
            "assess",
        ),
    ),
    Rule(
        "math",
        (
            "integral",
            "derivative",
            "equation",
            "probability",
            "solve for",
            "matrix",
            "theorem",
            "polynomial",
            "how many",
            "how much",
            "percent",
            "%",
            "remainder",
        ),
    ),
    Rule(
        "writing",
        (
            "write an essay",
            "write a story",
            "write a poem",
            "poem",
            "essay",
            "cover letter",
            "blog post",
            "rewrite",
        ),
    ),
    Rule("greeting", ("hello", "hi", "thanks", "thank you", "good morning", "goodbye")),
)
