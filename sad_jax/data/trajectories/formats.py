"""The built-in text formats, each a :class:`~sad_jax.data.trajectories.spec.FormatSpec` dict.

=============  ==================================================================
``react``      ReAct text: ``Question:`` / ``Thought n:`` / ``Action n:`` (``Act``) /
               ``Observation n:`` lines (HotpotQA, FEVER), WebShop
               (``Instruction:``, ``Action: think[...]`` is reasoning), LangChain
               markers (``Action Input:``, ``Final Answer:``), Reflexion
               ``Reflection:`` / ``New plan:`` (reasoning).
``alfworld``   ALFWorld text: ``> cmd`` lines are actions, ``> think: ...``
               reasoning, the lines after a command observations, the text before
               the first command the prompt; Reflexion ``New plan:`` reasoning.
``codeact``    smolagents CodeAct: ``Thought:`` prose, fenced code or
               ``<code>...</code>`` (actions), ``Observation:``.
``chatml``     ``<|im_start|>role\\n ... <|im_end|>`` turns (Qwen, Hermes).
``llama3``     ``<|start_header_id|>role<|end_header_id|>\\n\\n ... <|eot_id|>``
               turns; ``ipython`` / ``tool`` turns are observations,
               ``<|python_tag|>`` starts a tool call.
``deepseek``   ``<｜User｜>`` / ``<｜Assistant｜>`` turns (full-width bars), the
               system prompt after ``<｜begin▁of▁sentence｜>``,
               ``<｜tool▁calls▁begin｜>`` (action) and ``<｜tool▁outputs▁begin｜>``
               (observation) blocks.
``plain``      ``USER:`` / ``ASSISTANT:`` (Vicuna, also mid-line after ``</s>``),
               ``Human:`` / ``Assistant:``, ``### Instruction:`` / ``### Response:``
               turns, glaive's ``FUNCTION RESPONSE:`` (observation) and
               ``<functioncall>``; a preamble before the first turn is the prompt.
``mistral``    ``[INST] ... [/INST] answer</s>`` (Llama 2, Mistral; ``<<SYS>>``,
               ``[TOOL_CALLS]`` actions, ``[TOOL_RESULTS]`` observations).
``gemma``      ``<start_of_turn>user|model\n ... <end_of_turn>`` turns.
``zephyr``     ``<|user|>`` / ``<|assistant|>`` / ``<|system|>`` turns ending with
               ``</s>`` (Zephyr) or ``<|end|>`` (Phi-3).
``cohere``     ``<|START_OF_TURN_TOKEN|><|USER_TOKEN|> ... <|END_OF_TURN_TOKEN|>``
               (Command-R), ``CHATBOT`` turns are the agent's.
``granite``    ``<|start_of_role|>role<|end_of_role|> ... <|end_of_text|>``.
``autogen``    AutoGen console logs: ``name (to name):`` messages separated by
               ``-----`` lines; ``user_proxy`` / ``user`` / ``admin`` are the prompt,
               other names agents; ``exitcode: ...`` replies are observations.
``crewai``     CrewAI verbose logs: ``# Agent:``, ``## Task:``, ``## Thought:``,
               ``## Using tool:`` / ``## Tool Input:`` (action), ``## Tool Output:``,
               ``## Final Answer:``.
``langchain``  AgentExecutor verbose logs: ``> Entering new ... chain...`` then an
               unlabelled first thought, ``Action:`` / ``Action Input:`` /
               ``Observation:`` / ``Thought:`` / ``Final Answer:``, ``Invoking:``
               tool calls; a tool's output in its colour is the observation, ANSI
               codes and ``> Finished chain.`` are ``OTHER``.
``completion`` A bare model output: ``<think>...</think>`` then the answer or
               tool calls, no turns.
=============  ==================================================================

Inside the agent turns of every turn layout (and in ``completion``), the same
agent content rules apply: ``<think>``/``<thinking>``/``<thought>`` (a
``</think>`` with no ``<think>`` closes reasoning from the turn start),
``<tool_call>`` (JSON checked), MINT ``<execute>`` / ``<solution>``, OpenHands
``<execute_bash>`` / ``<execute_ipython>`` / ``<execute_browse>`` / ``<finish>``
/ ``<function=...>``, fenced commands when the environment answers the turn
(SWE-agent), ReAct markers in one message (``Thought: ... Action: ...``),
Qwen-Agent ``✿FUNCTION✿`` / ``✿ARGS✿`` (action), ``✿RESULT✿`` (observation),
``✿RETURN✿`` (action); prose before a tool call is reasoning. A user turn
after the first agent turn that starts like an environment reply
(``Observation:``, ``OBSERVATION:``, ``Out[n]:``, ``Execution result:``,
``Expert feedback:``, SWE-agent's ``(Open file: ...)`` state lines) is an
observation. Everywhere, harness lines (:data:`HARNESS`) are ``OTHER``.
"""
from __future__ import annotations

import functools
import re

from sad_jax.data.trajectories.spec import FormatSpec

#: Whole lines a run harness writes (never the agent, never the environment): OTHER.
HARNESS = (
    r"[ \t]*[=\-*#~_]{4,}[ \t]*\r?$",                                # ----------
    r"[ \t]*[=\-*#~]{3,}[ \t]*(?:Trial|Episode|Run|Task|Step|Round|Iteration|Instance|Example)\b",
    r"[ \t]*(?:Correct|Gold|Ground[ _-]?truth|Expected|Reference|True|Target)[ _]answer[ \t]*(?:is[ \t]*)?[:=]",
    r"[ \t]*(?:Gold|Ground[ _-]?truth|Label|Gold label|Reference)[ \t]*[:=]",
    r"[ \t]*(?:Reward|Score|Accuracy|Final reward|Total reward|Final score|Is correct|"
    r"STATUS|EM|F1|Success rate|Pass rate|Avg(?:erage)? reward|Episode reward)[ \t]*[:=][ \t]*\S",
    r"[ \t]*[━─═]{3,}",                                              # box-drawing step banners
    r"[ \t]*\[Step \d+: Duration\b",                                # smolagents step footers
    r"[ \t]*(?:Max(?:imum)? (?:steps|turns|iterations) (?:reached|exceeded)|"
    r"Episode (?:finished|done|ended|terminated))\b",
    r"[ \t]*\{[^\n]*['\"](?:reward|score|success|done|correct|is_correct|accuracy|em|f1|won|gt_answer)"
    r"['\"][ \t]*:[^\n]*\}[ \t]*\r?$",                               # result dicts
    r"[ \t]*\[(?:INFO|DEBUG|WARNING|WARN|ERROR|CRITICAL)\][ \t]",
    r"[ \t]*\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d",                      # timestamped log lines
    r"[ \t]*Action[ \t]*:[ \t]*reset[ \t]*\r?$",                     # the harness resets the env
    r"[ \t]*You have \d+ steps? left",                               # MINT budget lines
    r"[ \t]*>{4,}[ \t]*(?:EXECUTING|TERMINATING|USING AUTO REPLY)\b",   # AutoGen
    r"[ \t]*={3,}[ \t]*(?:Calling Function|Function Output)[ \t]*={3,}",  # LlamaIndex
    r"[ \t]*(?:Trial|Episode|Run|Environment|Env)[ \t]*#?[ \t]*\d+[ \t]*:?[ \t]*\r?$",
    r"[ \t]*\d+[ \t]+r[ \t]+(?:True|False|-?\d[\d.]*)[ \t]+rs[ \t]",          # ReAct ALFWorld tallies
)

#: Text layouts without turns only: score tallies a harness prints between episodes.
_TALLY_LINES = [r"[ \t]*-?\d+(?:\.\d+)?(?:[ \t]+-?\d+(?:\.\d+)?)+[ \t]*\r?$",
                r"(?i:observation)(?:[ \t]+\d+)?[ \t]*:[ \t]*Episode finished, reward"]

_N = r"(?:[ \t]+\d+)?[ \t]*:"
_ANSI = r"\x1b\[[0-9;]*[A-Za-z]"  # terminal colour codes
# The line after which a prompt's few-shot examples are over and the real task starts.
_EXAMPLES_END = r"(?i:here is the (?:task|question)|now,? (?:it's your turn|here is the task)|your turn)\b[^\n]*$"
_NOT_PROMPT = ["reasoning", "action", "observation"]
_FENCE = {"open": r"[ \t]*```[\w+.-]*[ \t\r]*(?:\n|\Z)", "regex": True, "line": True,
          "close": r"^[ \t]*```[^\n]*\n?", "type": "action", "name": "code block"}

#: Tags inside agent turns.
AGENT_TAGS = (
    {"open": "<think>", "close": "</think>", "type": "reasoning", "implicit_open": True},
    {"open": "<thinking>", "close": "</thinking>", "type": "reasoning"},
    {"open": "<thought>", "close": "</thought>", "type": "reasoning"},
    {"open": "<tool_call>", "close": "</tool_call>", "type": "action", "validate": "tool_call_json"},
    {"open": "<execute>", "close": "</execute>", "type": "action"},
    {"open": "<solution>", "close": "</solution>", "type": "action", "final": True},
    {"open": r"<execute_(?:bash|ipython|browse)>", "close": r"</execute_(?:bash|ipython|browse)>",
     "regex": True, "type": "action", "name": "<execute_...>"},
    {"open": "<finish>", "close": "</finish>", "type": "action", "final": True},
    {"open": r"<function=[^>\n]*>", "close": "</function>", "regex": True, "type": "action",
     "name": "<function=...>"},
    {"open": "<|python_tag|>", "close": None, "type": "action"},
    {"open": "<｜tool▁calls▁begin｜>", "close": "<｜tool▁calls▁end｜>", "type": "action"},
    {"open": "<function_calls>", "close": "</function_calls>", "type": "action"},
    {"open": "<function_results>", "close": "</function_results>", "type": "observation"},
    {"open": r"\[TOOL_CALLS\]", "close": r"</s>|\[/TOOL_CALLS\]|(?=\[TOOL_RESULTS\])", "regex": True,
     "type": "action", "name": "[TOOL_CALLS]"},
    {"open": "[TOOL_RESULTS]", "close": "[/TOOL_RESULTS]", "type": "observation"},
    {"open": "<｜tool▁outputs▁begin｜>", "close": "<｜tool▁outputs▁end｜>", "type": "observation"},
    {"open": "<｜tool▁output▁begin｜>", "close": "<｜tool▁output▁end｜>", "type": "observation"},
    {"open": "<tool_response>", "close": "</tool_response>", "type": "observation"},
    {**_FENCE, "acting": True},
    {"open": r"(?<![`\n])```(?=[^`\n]+```)", "close": "```", "regex": True, "type": "action",
     "name": "inline code fence"},
    {"open": "<functioncall>", "close": r"<\|endoftext\|>|(?=\n\n)|\Z", "regex": True, "type": "action",
     "name": "<functioncall>"},
)

#: Keys of an agent turn that is one JSON object (AutoGPT, agent-zero, LangChain JSON agents).
JSON_KEYS = {
    "reasoning": ["thoughts", "thought", "reasoning", "plan", "criticism", "reflection", "observations",
                  "analysis", "think", "rationale"],
    "action": ["command", "action", "action_input", "tool", "tool_name", "tool_args", "tool_input",
               "function", "name", "arguments", "parameters", "args", "code", "speak", "answer",
               "final_answer", "response"],
}

#: Line markers inside agent turns.
AGENT_MARKERS = (
    {"match": r"(?i:thoughts?)" + _N, "type": "reasoning"},
    {"match": r"(?i:reflection|new plan)[ \t]*:", "type": "reasoning"},
    {"match": r">?[ \t]*(?i:think)[ \t]*:", "type": "reasoning"},
    {"match": r"(?i:action|act)" + _N + r"(?=[ \t]*(?i:think)\[)", "type": "reasoning"},
    {"match": r"(?i:final answer)" + _N, "type": "action", "final": True},
    {"match": r"Answer" + _N, "type": "action", "final": True, "within": ["reasoning"]},
    {"match": r"(?i:action|act)" + _N + r"(?=[ \t]*(?i:finish|answer|submit)\b)", "type": "action",
     "final": True},
    {"match": r"(?i:action input|action|act)" + _N, "type": "action"},
    {"match": r"(?i:observation|obs)" + _N, "type": "observation"},
    {"match": "✿THOUGHT✿", "type": "reasoning"},
    {"match": "✿(?:FUNCTION|ARGS)✿", "type": "action"},
    {"match": "✿RESULT✿", "type": "observation"},
    {"match": "✿RETURN✿", "type": "action", "final": True},
)

#: A user turn after the first agent turn that starts like this is the environment's reply.
OBSERVATION_TURNS = (
    r"(?i:observation|obs)" + _N,
    r"(?i:observation)[ \t]*\n",
    r"(?i:execution (?:output|result)|tool (?:output|result|response)|function (?:output|result)|"
    r"output|result|environment|env|stdout|stderr)[ \t]*:",
    r"EXECUTION RESULT of \[",
    r"exitcode: -?\d+",
    r"Out\[\d+\]:",
    r"(?i:expert feedback)[ \t]*:",
    r"\[(?:File|Command|Python Interpreter|Jupyter|Code executed|Error)\b",
    r"(?s).*\(Open file:[^\n]*\)[ \t]*\n\(Current directory:",
)

#: A user turn that starts like this is a (new) task, never the environment's reply.
TASK_TURNS = (
    r"(?i:here is (?:your|the) (?:new |next )?(?:task|question)|now,? here is|your (?:new |next )?task is"
    r"|new (?:task|question)[ \t]*:|task[ \t]*:|question[ \t]*:)",
)

_CHAT_ROLES = {"system": "prompt", "developer": "prompt", "user": "prompt", "assistant": "agent",
               "tool": "observation", "function": "observation", "ipython": "observation",
               "observation": "observation"}


def _turn_layout(name, description, turns, other=()):
  return {"name": name, "description": description, "turns": turns, "tags": list(AGENT_TAGS),
          "markers": list(AGENT_MARKERS),
          "prompt_tags": [{"open": "<tool_response>", "close": "</tool_response>",
                           "type": "observation"}],
          "observation_turns": list(OBSERVATION_TURNS), "task_turns": list(TASK_TURNS),
          "other": [*other, _ANSI], "json_keys": JSON_KEYS}


_BOS = [r"<s>", r"</s>", r"<\|begin_of_text\|>", r"<\|endoftext\|>", "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>"]

#: The built-in text formats as spec dicts (``extends:`` names these).
SPECS = {
    "react": {
        "name": "react", "description": "ReAct Thought/Action/Observation lines",
        "start": "prompt",
        "markers": [
            {"match": r"(?:Reflection|New plan)[ \t]*:", "type": "reasoning", "within": _NOT_PROMPT},
            {"match": r"(?i:action|act)" + _N + r"(?=\s*(?i:think)\[)", "type": "reasoning"},
            {"match": r"(?:Question|Instruction|Task|Claim)" + _N, "type": "prompt"},
            {"match": r"(?i:thought)" + _N, "type": "reasoning"},
            {"match": r"(?i:action input|final answer)" + _N, "type": "action"},
            {"match": r"Answer" + _N, "type": "action", "within": ["reasoning"]},
            {"match": r"(?i:action|act)" + _N, "type": "action", "nonempty": "empty action"},
            {"match": r"(?i:observation|obs)" + _N, "type": "observation"},
        ],
        "examples_end": [_EXAMPLES_END], "last_task": r"^(?:Question|Claim|Instruction)(?:[ \t]+\d+)?[ \t]*:",
        "other": [_ANSI], "harness": list(_TALLY_LINES),
        "require_agent": "no 'Thought:' or 'Action:' line found in ReAct text",
    },
    "alfworld": {
        "name": "alfworld", "description": "ALFWorld '> command' lines",
        "start": "prompt",
        "markers": [
            {"match": r">[ \t]*(?i:think)[ \t]*:", "type": "reasoning", "scope": "line",
             "next": "observation", "nonempty": "empty thought"},
            {"match": r">", "type": "action", "scope": "line", "next": "observation",
             "nonempty": "empty command"},
            {"match": r"(?:New plan|Reflection)[ \t]*:", "type": "reasoning", "scope": "line",
             "next": "prompt", "within": _NOT_PROMPT},
        ],
        "examples_end": [_EXAMPLES_END], "last_task": r"^Your task is to:", "other": [_ANSI],
        "harness": list(_TALLY_LINES),
        "require_agent": "no '> command' line found in ALFWorld text",
    },
    "codeact": {
        "name": "codeact", "description": "smolagents Thought/Code/Observation",
        "start": "prompt",
        "markers": [
            {"match": r"(?:Task|Question|New task)[ \t]*:", "type": "prompt"},
            {"match": r"Thought[ \t]*:", "type": "reasoning"},
            {"match": r"(?:Code|Final [Aa]nswer)[ \t]*:", "type": "action"},
            {"match": r"(?:Observation|Execution logs|Out|Last output from code snippet)[ \t]*:",
             "type": "observation"},
        ],
        "tags": [
            {**_FENCE, "open": r"[ \t]*```(?:py|python)?[ \t\r]*(?:\n|\Z)",
             "within": ["reasoning", "action"], "after": "action"},
            {"open": r"[ \t]*<code>[ \t\r]*(?:\n|\Z)", "regex": True, "line": True,
             "close": r"^[ \t]*</code>[^\n]*\n?", "type": "action", "name": "code block",
             "within": ["reasoning", "action"], "after": "action"},
        ],
        "other": [_ANSI],
        "require_agent": "no 'Thought:' or code block found in CodeAct text",
    },
    "chatml": _turn_layout("chatml", "<|im_start|>role ... <|im_end|> turns", {
        "header": r"<\|im_start\|>(?P<role>(?:(?!<\|im_start\|>)[^\n])*)\n",
        "end": ["<|im_end|>"], "roles": dict(_CHAT_ROLES)}),
    "llama3": _turn_layout("llama3", "Llama 3 <|start_header_id|> turns", {
        "header": r"<\|start_header_id\|>(?P<role>[^<\n]*)<\|end_header_id\|>\n{0,2}",
        "end": ["<|eot_id|>", "<|eom_id|>"], "roles": dict(_CHAT_ROLES)},
        other=[r"<\|begin_of_text\|>"]),
    "deepseek": _turn_layout("deepseek", "DeepSeek <｜User｜>/<｜Assistant｜> turns", {
        "header": "<｜(?P<role>User|Assistant)｜>", "preamble": "prompt",
        "roles": {"User": "prompt", "Assistant": "agent"}},
        other=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]),
    "plain": _turn_layout("plain", "USER:/ASSISTANT:, Human:/Assistant:, ### Instruction:/### Response:", {
        "header": (r"(?:(?<![^\n])|(?<=</s>)|(?<=<s>)|(?<=<\|begin_of_text\|>)|(?<=<\|endoftext\|>)"
                   r"|(?<=[ \t])(?=[A-Z]{4,9}:))"
                   r"(?P<role>USER|ASSISTANT|SYSTEM|FUNCTION RESPONSE|Human|Assistant|User|System|"
                   r"###[ \t]*(?:Instruction|Input|Response|Human|Assistant))[ \t]*:[ \t]?"),
        "preamble": "prompt",
        "roles": {"USER": "prompt", "User": "prompt", "Human": "prompt", "SYSTEM": "prompt",
                  "System": "prompt", "ASSISTANT": "agent", "Assistant": "agent",
                  "FUNCTION RESPONSE": "observation",
                  **{f"###{sp}{r}": k for sp in ("", " ") for r, k in (
                      ("Instruction", "prompt"), ("Input", "prompt"), ("Human", "prompt"),
                      ("Response", "agent"), ("Assistant", "agent"))}}},
        other=[r"</s>", r"<s>", r"<\|endoftext\|>"]),
    "mistral": _turn_layout("mistral", "Llama 2 / Mistral [INST] ... [/INST] turns", {
        "header": r"(?P<role>\[INST\]|\[/INST\])[ \t]?",
        "preamble": "prompt",
        "roles": {"[INST]": "prompt", "[/INST]": "agent"}},
        other=[r"<s>", r"</s>", r"\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS)\]", r"<<SYS>>\n?", r"\n?<</SYS>>\n*"]),
    "gemma": _turn_layout("gemma", "Gemma <start_of_turn>role ... <end_of_turn> turns", {
        "header": r"<start_of_turn>(?P<role>[^\n<]*)\n", "end": ["<end_of_turn>"],
        "roles": {"user": "prompt", "system": "prompt", "model": "agent", "assistant": "agent",
                  "tool": "observation"}},
        other=[r"<bos>", r"<eos>"]),
    "zephyr": _turn_layout("zephyr", "Zephyr / Phi-3 <|user|> ... </s> or <|end|> turns", {
        "header": r"<\|(?P<role>system|user|assistant|tool)\|>\n?", "end": ["<|end|>", "</s>"],
        "roles": {"system": "prompt", "user": "prompt", "assistant": "agent", "tool": "observation"}},
        other=[r"<s>", r"<\|endoftext\|>"]),
    "cohere": _turn_layout("cohere", "Command-R <|START_OF_TURN_TOKEN|><|USER_TOKEN|> turns", {
        "header": r"<\|START_OF_TURN_TOKEN\|><\|(?P<role>USER|CHATBOT|SYSTEM)_TOKEN\|>",
        "end": ["<|END_OF_TURN_TOKEN|>"],
        "roles": {"USER": "prompt", "SYSTEM": "prompt", "CHATBOT": "agent"}},
        other=[r"<BOS_TOKEN>"]),
    "granite": _turn_layout("granite", "Granite <|start_of_role|>role<|end_of_role|> turns", {
        "header": r"<\|start_of_role\|>(?P<role>[^<\n]*)<\|end_of_role\|>", "end": ["<|end_of_text|>"],
        "roles": {"system": "prompt", "user": "prompt", "assistant": "agent", "tool": "observation",
                  "tool_response": "observation", "available_tools": "prompt"}}),
    "autogen": _turn_layout("autogen", "AutoGen console logs: 'name (to name):' messages", {
        "header": r"^(?P<role>[A-Za-z][\w.-]*) \(to [\w.-]+\):\n\n?", "preamble": "prompt",
        "roles": {"user_proxy": "prompt", "user": "prompt", "User": "prompt", "human": "prompt",
                  "Human": "prompt", "admin": "prompt", "Admin": "prompt", "*": "agent"}}),
    "crewai": {
        "name": "crewai", "description": "CrewAI verbose logs: # Agent: / ## Thought: / ## Using tool:",
        "start": "prompt",
        "markers": [
            {"match": r"#[ \t]*Agent:", "type": "other", "scope": "line", "next": "prompt"},
            {"match": r"##[ \t]*Task:", "type": "prompt"},
            {"match": r"##[ \t]*Thought:", "type": "reasoning"},
            {"match": r"##[ \t]*(?:Using tool|Tool Input):", "type": "action"},
            {"match": r"##[ \t]*Tool Output:", "type": "observation"},
            {"match": r"##[ \t]*Final Answer:", "type": "action", "final": True},
        ],
        "other": [_ANSI],
        "require_agent": "no thought, tool use or final answer found in the CrewAI log",
    },
    "langchain": {
        "name": "langchain", "description": "LangChain AgentExecutor verbose logs",
        "start": "prompt",
        "markers": [
            {"match": r">?[ \t]*Entering new [^\n]*chain", "type": "other", "scope": "line",
             "next": "agent"},
            {"match": r">?[ \t]*Finished chain", "type": "other", "scope": "line", "next": "other"},
            {"match": r"Thought" + _N, "type": "reasoning"},
            {"match": r"(?:Action Input|Action|Final Answer|AI)" + _N, "type": "action"},
            {"match": r"Invoking:", "type": "action", "scope": "line", "next": "observation"},
            {"match": r"Observation" + _N, "type": "observation"},
        ],
        # verbose=True colours each tool's output in the tool's colour (the agent's text is green).
        "tags": [{"open": r"\x1b\[(?:36;1|33;1|38;5;200|31;1)m\x1b\[1;3m", "close": r"\x1b\[0m", "regex": True,
                  "type": "observation", "after": "agent", "name": "coloured tool output"}],
        "other": [_ANSI],
        "require_agent": "no thought or action found in the LangChain log",
    },
    "completion": {
        "name": "completion", "description": "a bare model output: <think>...</think> answer",
        "start": "agent", "tags": list(AGENT_TAGS), "markers": list(AGENT_MARKERS),
        "other": [*_BOS, _ANSI], "json_keys": JSON_KEYS,
    },
}

TEXT_FORMATS = tuple(SPECS)

_CODE = re.compile(r"^[ \t]*(```(?:py|python)?|<code>)[ \t\r]*$|<end_code>", re.MULTILINE)
_CODEACT_MARKER = re.compile(r"^(Thought|Code)[ \t]*:", re.MULTILINE)
_REACT_MARKER = re.compile(r"^(Thought|Action)(?:[ \t]+\d+)?[ \t]*:", re.MULTILINE)
_ALFWORLD_COMMAND = re.compile(r"^>", re.MULTILINE)
_LANGCHAIN = re.compile(r"^[ \t]*(?:\x1b\[[0-9;]*m)*>?[ \t]*(?:Entering new [^\n]*chain|Finished chain)",
                        re.MULTILINE)
_CREWAI = re.compile(r"^[ \t]*(?:\x1b\[[0-9;]*m)*##[ \t]*(?:Thought|Using tool|Final Answer):", re.MULTILINE)
_AUTOGEN = re.compile(r"^[A-Za-z][\w.-]* \(to [\w.-]+\):\n", re.MULTILINE)
_THINK_FIRST = re.compile(r"\s*(?:<s>|<\|begin_of_text\|>|<｜begin▁of▁sentence｜>)?\s*<think>")
_COMPLETION = re.compile(r"<think>|</think>|<tool_call>|^DISCUSSION[ \t]*$", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def builtin(name: str) -> FormatSpec:
  """The compiled built-in spec ``name`` (one of :data:`TEXT_FORMATS`)."""
  return FormatSpec.from_dict(SPECS[name])


def _has_agent_turn(name: str, text: str) -> bool:
  spec = builtin(name)
  roles = spec.turns.roles
  return any(roles.get(m.group("role"), roles.get("*")) == "agent" for m in spec.turns.header.finditer(text))


def detect_text(text: str) -> str | None:
  """The built-in text format of ``text``, or None; rules in order, first match wins.

  ``<|im_start|>`` -> chatml; ``<|start_header_id|>`` -> llama3; ``<｜User｜>`` or
  ``<｜Assistant｜>`` -> deepseek; ``<start_of_turn>`` -> gemma; ``<|START_OF_TURN_TOKEN|>``
  -> cohere; ``<|start_of_role|>`` -> granite; ``<|assistant|>`` or
  ``<|user|>`` -> zephyr; ``[/INST]`` -> mistral; text that starts with ``<think>`` (after a BOS token) -> completion;
  a LangChain chain banner -> langchain; a CrewAI ``## Thought:`` /
  ``## Using tool:`` / ``## Final Answer:`` line -> crewai; AutoGen ``name (to name):``
  headers -> autogen; an
  ``ASSISTANT:`` / ``Assistant:`` turn header -> plain; a ``Thought:``/``Code:``
  line with a code fence or ``<end_code>`` -> codeact; a ``Thought[ n]:`` /
  ``Action[ n]:`` line -> react; a line starting with ``>`` -> alfworld;
  ``<think>``, ``</think>``, ``<tool_call>`` or a SWE-agent ``DISCUSSION`` line -> completion.
  """
  if "<|im_start|>" in text:
    return "chatml"
  if "<|start_header_id|>" in text:
    return "llama3"
  if "<｜User｜>" in text or "<｜Assistant｜>" in text:
    return "deepseek"
  if "<start_of_turn>" in text:
    return "gemma"
  if "<|START_OF_TURN_TOKEN|>" in text:
    return "cohere"
  if "<|start_of_role|>" in text:
    return "granite"
  if "<|assistant|>" in text or "<|user|>" in text:
    return "zephyr"
  if "[/INST]" in text:
    return "mistral"
  if _THINK_FIRST.match(text):
    return "completion"
  if _LANGCHAIN.search(text):
    return "langchain"
  if _CREWAI.search(text):
    return "crewai"
  if _has_agent_turn("autogen", text) and _AUTOGEN.search(text):
    return "autogen"
  if _has_agent_turn("plain", text):
    return "plain"
  if _CODEACT_MARKER.search(text) and _CODE.search(text):
    return "codeact"
  if _REACT_MARKER.search(text):
    return "react"
  if _ALFWORLD_COMMAND.search(text):
    return "alfworld"
  if _COMPLETION.search(text):
    return "completion"
  return None
