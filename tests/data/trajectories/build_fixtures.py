"""Writes `conventions.jsonl`: one or more trajectories per agent-data convention.

Every trajectory is written for this project, in the layout the convention documents
(the source of each layout is named in the record's `convention`); none is copied from
a dataset or a log. `expect` holds the span types a careful annotator sets: for each
type, substrings of which at least one occurrence must have every non-space character
labelled with that type. Run from the repository root:

  python tests/data/trajectories/build_fixtures.py
"""
import json
import pathlib

E = "\x1b"  # ANSI escape (LangChain colours its verbose output)

RECORDS = [
    # ------------------------------------------------------------------ dataset schemas
    {
        "name": "sharegpt_function_call_observation",
        "convention": "ShareGPT as LLaMA-Factory's data/README documents it: conversations of "
                      "from/value, roles human / gpt / function_call / observation, a `system` "
                      "field and `tools` as a JSON string",
        "format": "sharegpt",
        "trajectory": {
            "system": "You are a travel assistant with tools.",
            "tools": json.dumps([{"name": "train_times", "description": "Departures between two cities",
                                  "parameters": {"type": "object", "properties": {
                                      "origin": {"type": "string"}, "dest": {"type": "string"}}}}]),
            "conversations": [
                {"from": "human", "value": "When does the next train from Lyon to Turin leave?"},
                {"from": "function_call", "value": json.dumps(
                    {"name": "train_times", "arguments": {"origin": "Lyon", "dest": "Turin"}})},
                {"from": "observation", "value": json.dumps({"departures": ["14:05", "17:40"]})},
                {"from": "gpt", "value": "The next train to Turin leaves Lyon at 14:05."},
            ]},
        "expect": {"PROMPT": ["When does the next train from Lyon", "You are a travel assistant",
                              "Departures between two cities"],
                   "ACTION": ["train_times", "\"origin\": \"Lyon\"", "The next train to Turin leaves Lyon at 14:05."],
                   "OBSERVATION": ["\"departures\": [\"14:05\", \"17:40\"]"]},
    },
    {
        "name": "sharegpt_react_in_chat",
        "convention": "ReAct-in-chat agent instruction data in ShareGPT form: the task and the "
                      "environment's `Observation:` replies come from `human`, the agent's "
                      "`Thought:`/`Action:` from `gpt`",
        "format": "sharegpt",
        "trajectory": [
            {"from": "human", "value": "Answer with the search tool. Use Thought:, Action: and "
                                       "finish[answer].\nQuestion: Which is longer, the Loire or the Rhone?"},
            {"from": "gpt", "value": "Thought: I need the length of the Loire first.\nAction: search[Loire length]"},
            {"from": "human", "value": "Observation: The Loire is about 1006 km long."},
            {"from": "gpt", "value": "Thought: Now the Rhone.\nAction: search[Rhone length]"},
            {"from": "human", "value": "Observation: The Rhone is about 813 km long."},
            {"from": "gpt", "value": "Thought: 1006 km is more than 813 km, so the Loire is longer.\n"
                                     "Action: finish[the Loire]"},
        ],
        "expect": {"PROMPT": ["Which is longer, the Loire or the Rhone?", "Use Thought:, Action: and"],
                   "REASONING": ["I need the length of the Loire first.", "Now the Rhone.",
                                 "so the Loire is longer."],
                   "ACTION": ["search[Loire length]", "search[Rhone length]", "finish[the Loire]"],
                   "OBSERVATION": ["The Loire is about 1006 km long.", "Observation: The Rhone is about 813 km"]},
    },
    {
        "name": "llamafactory_content_parts",
        "convention": "LLaMA-Factory OpenAI-style messages whose content is a list of typed "
                      "parts: reasoning, text and tool_call (value = the call as JSON)",
        "format": "chat",
        "trajectory": {"messages": [
            {"role": "user", "content": [{"type": "text", "value": "Convert 72 F to Celsius."}]},
            {"role": "assistant", "content": [
                {"type": "reasoning", "value": "C = (F - 32) * 5 / 9; the converter tool does this exactly."},
                {"type": "tool_call", "value": json.dumps({"name": "convert_temp",
                                                           "arguments": {"value": 72, "unit": "F"}})}]},
            {"role": "tool", "content": [{"type": "text", "value": "22.2 C"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "72 F is about 22.2 C."}]},
        ]},
        "expect": {"PROMPT": ["Convert 72 F to Celsius."],
                   "REASONING": ["the converter tool does this exactly."],
                   "ACTION": ["convert_temp", "\"unit\": \"F\"", "72 F is about 22.2 C."],
                   "OBSERVATION": ["22.2 C"]},
    },
    {
        "name": "qwen_agent_function_messages",
        "convention": "Qwen-Agent messages: assistant `function_call` {name, arguments}, "
                      "`role: function` results, `reasoning_content`",
        "format": "chat",
        "trajectory": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the population of Reykjavik?"},
            {"role": "assistant", "content": "", "reasoning_content": "I should look it up rather than guess.",
             "function_call": {"name": "city_facts", "arguments": "{\"city\": \"Reykjavik\"}"}},
            {"role": "function", "name": "city_facts", "content": "{\"population\": 139875}"},
            {"role": "assistant", "content": "Reykjavik has about 140,000 inhabitants."},
        ],
        "expect": {"PROMPT": ["What is the population of Reykjavik?"],
                   "REASONING": ["I should look it up rather than guess."],
                   "ACTION": ["city_facts", "Reykjavik has about 140,000 inhabitants."],
                   "OBSERVATION": ["\"population\": 139875"]},
    },
    {
        "name": "ms_swift_tool_call_roles",
        "convention": "ms-swift agent messages: roles `tool_call` (the call as JSON) and "
                      "`tool_response` after an assistant message",
        "format": "chat",
        "trajectory": {"messages": [
            {"role": "user", "content": "Is it going to rain in Bergen tomorrow?"},
            {"role": "assistant", "content": "Let me check the forecast for Bergen."},
            {"role": "tool_call", "content": json.dumps({"name": "forecast",
                                                         "arguments": {"city": "Bergen", "day": "tomorrow"}})},
            {"role": "tool_response", "content": "rain, 11 mm"},
            {"role": "assistant", "content": "Yes, about 11 mm of rain is expected in Bergen tomorrow."},
        ]},
        "expect": {"PROMPT": ["Is it going to rain in Bergen tomorrow?"],
                   "REASONING": ["Let me check the forecast for Bergen."],
                   "ACTION": ["forecast", "\"day\": \"tomorrow\"", "about 11 mm of rain is expected"],
                   "OBSERVATION": ["rain, 11 mm"]},
    },
    {
        "name": "agentbench_alfworld_turn_list",
        "convention": "AgentBench-style ALFWorld history as a list of turn strings: the task, "
                      "then agent `THOUGHT:`/`ACTION:` turns and environment replies",
        "format": "turns",
        "trajectory": [
            "Interact with a household to solve a task. Reply with THOUGHT: and ACTION:.\n"
            "You are in the middle of a room. Looking around you, you see a desk 1, a shelf 1 and a "
            "drawer 1.\nYour task is to: put a pen in the drawer.",
            "THOUGHT: A pen is probably on the desk.\nACTION: go to desk 1",
            "On the desk 1, you see a pen 2 and a lamp 1.",
            "THOUGHT: There is the pen.\nACTION: take pen 2 from desk 1",
            "You pick up the pen 2 from the desk 1.",
            "ACTION: put pen 2 in/on drawer 1",
            "You put the pen 2 in/on the drawer 1.",
        ],
        "expect": {"PROMPT": ["Your task is to: put a pen in the drawer."],
                   "REASONING": ["A pen is probably on the desk.", "There is the pen."],
                   "ACTION": ["go to desk 1", "take pen 2 from desk 1", "put pen 2 in/on drawer 1"],
                   "OBSERVATION": ["On the desk 1, you see a pen 2", "You put the pen 2 in/on the drawer 1."]},
    },
    {
        "name": "alfworld_react_turn_list",
        "convention": "ReAct ALFWorld turns as a list of strings: `think:` turns are reasoning, "
                      "bare commands actions, `OK.` and room text observations",
        "format": "turns",
        "trajectory": [
            "You are in the middle of a room. You see a sinkbasin 1 and a fridge 1.\n"
            "Your task is to: clean some lettuce and put it in fridge.",
            "think: First I need lettuce; it is likely in the fridge.",
            "OK.",
            "open fridge 1",
            "You open the fridge 1. In it, you see a lettuce 1.",
        ],
        "expect": {"PROMPT": ["clean some lettuce and put it in fridge."],
                   "REASONING": ["First I need lettuce; it is likely in the fridge."],
                   "ACTION": ["open fridge 1"],
                   "OBSERVATION": ["OK.", "In it, you see a lettuce 1."]},
    },
    {
        "name": "swe_agent_steps",
        "convention": "SWE-agent .traj steps: thought, action (a shell command), observation",
        "format": "swe-agent",
        "trajectory": {"trajectory": [
            {"thought": "Let's find where the parser lives before editing anything.",
             "action": "find_file \"parser.py\"",
             "observation": "Found 1 matches for \"parser.py\" in /repo:\n/repo/src/parser.py"},
            {"thought": "Now open the file at the failing function.",
             "action": "open src/parser.py 120",
             "observation": "[File: /repo/src/parser.py (300 lines total)]\n120:def parse_date(s):"},
            {"thought": "The fix is done; submit it.", "action": "submit", "observation": ""},
        ]},
        "expect": {"REASONING": ["Let's find where the parser lives", "Now open the file at the failing function."],
                   "ACTION": ["find_file \"parser.py\"", "open src/parser.py 120", "submit"],
                   "OBSERVATION": ["/repo/src/parser.py (300 lines total)", "Found 1 matches"]},
    },
    {
        "name": "swe_agent_history_no_function_calling",
        "convention": "SWE-agent history messages without function calling: the command in a "
                      "fence after the discussion, observations as `user` messages ending with "
                      "the `(Open file: ...)` / `(Current directory: ...)` state lines",
        "format": "swe-agent",
        "trajectory": {"history": [
            {"role": "system", "content": "You are an autonomous programmer working in a shell."},
            {"role": "user", "content": "We need to fix this issue: dates before 1970 crash the parser."},
            {"role": "assistant", "content": "First I will reproduce the crash with a small script.\n\n"
                                             "```\ncreate reproduce.py\n```"},
            {"role": "user", "content": "[File: /repo/reproduce.py (1 lines total)]\n1:\n"
                                        "(Open file: /repo/reproduce.py)\n(Current directory: /repo)\nbash-$"},
            {"role": "assistant", "content": "Now run it.\n\n```\npython reproduce.py\n```"},
            {"role": "user", "content": "ValueError: year 1969 is out of range\n"
                                        "(Open file: /repo/reproduce.py)\n(Current directory: /repo)\nbash-$"},
        ]},
        "expect": {"PROMPT": ["dates before 1970 crash the parser.", "You are an autonomous programmer"],
                   "REASONING": ["First I will reproduce the crash with a small script.", "Now run it."],
                   "ACTION": ["create reproduce.py", "python reproduce.py"],
                   "OBSERVATION": ["ValueError: year 1969 is out of range", "(Current directory: /repo)",
                                   "[File: /repo/reproduce.py (1 lines total)]"]},
    },
    # ------------------------------------------------------------------ agent frameworks in messages
    {
        "name": "openhands_codeact_messages",
        "convention": "OpenHands CodeActAgent prompts: prose, then <execute_bash> / "
                      "<execute_ipython> / <execute_browse>, `OBSERVATION:` user replies, <finish>",
        "format": "chat",
        "trajectory": [
            {"role": "system", "content": "You run bash with <execute_bash> and Python with <execute_ipython>."},
            {"role": "user", "content": "Count the lines of data.csv and tell me the number."},
            {"role": "assistant", "content": "I will count them with wc.\n<execute_bash>\nwc -l data.csv\n</execute_bash>"},
            {"role": "user", "content": "OBSERVATION:\n41 data.csv\n[Command finished with exit code 0]"},
            {"role": "assistant", "content": "One line is the header; let me check it in Python.\n"
                                             "<execute_ipython>\nprint(open('data.csv').readline())\n</execute_ipython>"},
            {"role": "user", "content": "OBSERVATION:\nid,name,score"},
            {"role": "assistant", "content": "Let me also look at the project page.\n"
                                             "<execute_browse>\ngoto('http://localhost:8000')\n</execute_browse>"},
            {"role": "user", "content": "OBSERVATION:\nThe page shows 40 rows."},
            {"role": "assistant", "content": "data.csv has 40 data rows plus a header.\n<finish></finish>"},
        ],
        "expect": {"PROMPT": ["Count the lines of data.csv"],
                   "REASONING": ["I will count them with wc.", "One line is the header; let me check it",
                                 "Let me also look at the project page.", "data.csv has 40 data rows plus a header."],
                   "ACTION": ["<execute_bash>\nwc -l data.csv\n</execute_bash>", "print(open('data.csv').readline())",
                              "goto('http://localhost:8000')", "<finish></finish>"],
                   "OBSERVATION": ["41 data.csv", "[Command finished with exit code 0]", "id,name,score",
                                   "The page shows 40 rows."]},
    },
    {
        "name": "mint_codeact_messages",
        "convention": "MINT interaction: <thought> and <execute> in the assistant turn, "
                      "`Observation:` replies with the harness's step budget line, "
                      "`Expert feedback:`, <solution>",
        "format": "chat",
        "trajectory": [
            {"role": "user", "content": "Task:\nWhat is the sum of the squares of 1..10? "
                                        "Answer inside <solution></solution>."},
            {"role": "assistant", "content": "<thought> A loop is the simplest way to be sure. </thought>\n"
                                             "<execute> print(sum(i * i for i in range(1, 11))) </execute>"},
            {"role": "user", "content": "Observation:\n385\nYou have 4 steps left and 2 chances to propose solution left."},
            {"role": "user", "content": "Expert feedback:\nThe computation is right; propose it now."},
            {"role": "assistant", "content": "<solution> 385 </solution>"},
        ],
        "expect": {"PROMPT": ["What is the sum of the squares of 1..10?"],
                   "REASONING": ["A loop is the simplest way to be sure."],
                   "ACTION": ["print(sum(i * i for i in range(1, 11)))", "<solution> 385 </solution>"],
                   "OBSERVATION": ["385", "The computation is right; propose it now."],
                   "OTHER": ["You have 4 steps left and 2 chances to propose solution left."]},
    },
    {
        "name": "openai_prose_before_tool_call_and_tools",
        "convention": "OpenAI chat with a `tools` list (rendered into the system prompt as "
                      "chat templates do) and assistant prose before its tool call",
        "format": "chat",
        "trajectory": {
            "tools": [{"type": "function", "function": {"name": "stock_price", "description": "Latest price of a ticker",
                                                        "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "user", "content": "How much is one ACME share?"},
                {"role": "assistant", "content": "I'll look up the latest ACME price.",
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "stock_price", "arguments": "{\"ticker\": \"ACME\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"price\": 12.5}"},
                {"role": "assistant", "content": "One ACME share costs 12.50."},
            ]},
        "expect": {"PROMPT": ["How much is one ACME share?", "Latest price of a ticker", "<tools>"],
                   "REASONING": ["I'll look up the latest ACME price."],
                   "ACTION": ["\"ticker\": \"ACME\"", "One ACME share costs 12.50."],
                   "OBSERVATION": ["\"price\": 12.5"]},
    },
    # ------------------------------------------------------------------ chat-template text
    {
        "name": "chatml_react_with_observation_in_assistant_turn",
        "convention": "ReAct inside one ChatML assistant turn, with the tool result written "
                      "into the same turn after `Observation:`",
        "format": "chatml",
        "trajectory": "<|im_start|>user\nWhat year was the Eiffel Tower finished?<|im_end|>\n"
                      "<|im_start|>assistant\nThought: I should search for it.\nAction: search\n"
                      "Action Input: Eiffel Tower completion year\nObservation: It was completed in 1889.\n"
                      "Thought: That answers it.\nFinal Answer: 1889<|im_end|>\n",
        "expect": {"PROMPT": ["What year was the Eiffel Tower finished?"],
                   "REASONING": ["I should search for it.", "That answers it."],
                   "ACTION": ["Action Input: Eiffel Tower completion year", "Final Answer: 1889"],
                   "OBSERVATION": ["It was completed in 1889."]},
    },
    {
        "name": "qwen_agent_fncall_text",
        "convention": "Qwen-Agent function-call prompt rendered in ChatML: ✿FUNCTION✿ / ✿ARGS✿ "
                      "(the call), ✿RESULT✿ (the tool's output, in the assistant turn), ✿RETURN✿ (the answer)",
        "format": "chatml",
        "trajectory": "<|im_start|>system\nYou may call tools.<|im_end|>\n"
                      "<|im_start|>user\nWhat time is it in Tokyo?<|im_end|>\n"
                      "<|im_start|>assistant\n✿FUNCTION✿: world_clock\n✿ARGS✿: {\"tz\": \"Asia/Tokyo\"}\n"
                      "✿RESULT✿: 21:14\n✿RETURN✿: It is 21:14 in Tokyo.<|im_end|>\n",
        "expect": {"PROMPT": ["What time is it in Tokyo?"],
                   "ACTION": ["✿FUNCTION✿: world_clock", "{\"tz\": \"Asia/Tokyo\"}", "It is 21:14 in Tokyo."],
                   "OBSERVATION": ["✿RESULT✿: 21:14"]},
    },
    {
        "name": "llama3_headers_ipython",
        "convention": "Llama 3.1 prompt format: <|begin_of_text|>, <|start_header_id|>role"
                      "<|end_header_id|>, <|eot_id|> / <|eom_id|>, <|python_tag|> tool calls, "
                      "`ipython` tool output",
        "format": "llama3",
        "trajectory": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                      "Environment: ipython<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                      "What is 2 to the power 40?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                      "<|python_tag|>print(2 ** 40)<|eom_id|><|start_header_id|>ipython<|end_header_id|>\n\n"
                      "1099511627776<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                      "2 to the power 40 is 1099511627776.<|eot_id|>",
        "expect": {"PROMPT": ["What is 2 to the power 40?", "Environment: ipython"],
                   "ACTION": ["print(2 ** 40)", "2 to the power 40 is 1099511627776."],
                   "OBSERVATION": ["1099511627776"],
                   "OTHER": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>"]},
    },
    {
        "name": "deepseek_r1_fullwidth_tokens",
        "convention": "DeepSeek-R1 chat template: <｜begin▁of▁sentence｜> then the system prompt, "
                      "<｜User｜> / <｜Assistant｜> with full-width bars, <think> reasoning, "
                      "<｜end▁of▁sentence｜>",
        "format": "deepseek",
        "trajectory": "<｜begin▁of▁sentence｜>You are a careful math tutor.<｜User｜>Is 221 prime?"
                      "<｜Assistant｜><think>\n221 = 13 * 17, so it has divisors other than 1 and itself.\n"
                      "</think>\n\nNo: 221 = 13 × 17.<｜end▁of▁sentence｜>",
        "expect": {"PROMPT": ["Is 221 prime?", "You are a careful math tutor."],
                   "REASONING": ["221 = 13 * 17, so it has divisors"],
                   "ACTION": ["No: 221 = 13 × 17."],
                   "OTHER": ["<｜end▁of▁sentence｜>", "<｜User｜>", "<｜begin▁of▁sentence｜>"]},
    },
    {
        "name": "deepseek_v3_tool_calls",
        "convention": "DeepSeek-V3 tool calls: <｜tool▁calls▁begin｜> ... <｜tool▁calls▁end｜>, "
                      "the outputs in <｜tool▁outputs▁begin｜> ... <｜tool▁outputs▁end｜>, then the answer",
        "format": "deepseek",
        "trajectory": "<｜begin▁of▁sentence｜><｜User｜>Weather in Lima?<｜Assistant｜>"
                      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n```json\n"
                      "{\"city\": \"Lima\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
                      "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{\"sky\": \"overcast\", \"c\": 18}"
                      "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is overcast and 18 C in Lima."
                      "<｜end▁of▁sentence｜>",
        "expect": {"PROMPT": ["Weather in Lima?"],
                   "ACTION": ["{\"city\": \"Lima\"}", "It is overcast and 18 C in Lima."],
                   "OBSERVATION": ["\"sky\": \"overcast\""]},
    },
    {
        "name": "plain_vicuna_one_line",
        "convention": "Vicuna v1.1 conversation template: a system sentence, then `USER:` / "
                      "`ASSISTANT:` separated by spaces, `</s>` after each answer",
        "format": "plain",
        "trajectory": "A chat between a curious user and an artificial intelligence assistant. "
                      "USER: Name a prime number above 50. ASSISTANT: 53 is prime.</s>"
                      "USER: And one above 60? ASSISTANT: 61.</s>",
        "expect": {"PROMPT": ["A chat between a curious user", "Name a prime number above 50.", "And one above 60?"],
                   "ACTION": ["53 is prime.", "61."],
                   "OTHER": ["</s>", "ASSISTANT:"]},
    },
    {
        "name": "plain_openhands_text_log",
        "convention": "OpenHands-style text transcript: `----------` separators, `USER:` / "
                      "`ASSISTANT:` turns, <execute_bash>, `OBSERVATION:` from the user side",
        "format": "plain",
        "trajectory": "----------\n\nUSER: Make a folder named out.\n\n----------\n\n"
                      "ASSISTANT: Creating it now.\n<execute_bash>\nmkdir -p out\n</execute_bash>\n\n"
                      "----------\n\nUSER: OBSERVATION:\n[Command finished with exit code 0]\n\n----------\n\n"
                      "ASSISTANT: The folder out exists now.\n",
        "expect": {"PROMPT": ["Make a folder named out."],
                   "REASONING": ["Creating it now."],
                   "ACTION": ["mkdir -p out", "The folder out exists now."],
                   "OBSERVATION": ["[Command finished with exit code 0]"],
                   "OTHER": ["----------"]},
    },
    {
        "name": "plain_human_assistant_react",
        "convention": "Human:/Assistant: transcript whose assistant turns are ReAct steps and "
                      "whose human turns after the first carry the observations",
        "format": "plain",
        "trajectory": "Human: Find the capital of Australia with the lookup tool.\n\n"
                      "Assistant: Thought: Many people guess Sydney; I should check.\nAction: lookup[Australia capital]\n\n"
                      "Human: Observation: Canberra is the capital of Australia.\n\n"
                      "Assistant: Thought: Confirmed.\nAction: finish[Canberra]\n",
        "expect": {"PROMPT": ["Find the capital of Australia with the lookup tool."],
                   "REASONING": ["Many people guess Sydney; I should check.", "Confirmed."],
                   "ACTION": ["lookup[Australia capital]", "finish[Canberra]"],
                   "OBSERVATION": ["Canberra is the capital of Australia."]},
    },
    {
        "name": "bare_think_completion_with_bos",
        "convention": "A raw model completion as R1-style models emit it: a BOS token, "
                      "<think> at the start, then the answer",
        "format": "completion",
        "trajectory": "<s><think>\nThe user wants a haiku about rain; five, seven, five syllables.\n</think>\n\n"
                      "Soft rain on the roof\nthe gutters hum a low song\nnight drinks the city",
        "expect": {"REASONING": ["five, seven, five syllables."],
                   "ACTION": ["Soft rain on the roof", "night drinks the city"],
                   "OTHER": ["<s>"]},
    },
    {
        "name": "bare_think_completion_tool_call",
        "convention": "A raw completion: </think> closes reasoning the template opened, then a "
                      "Hermes <tool_call>",
        "format": "completion",
        "trajectory": "I need today's exchange rate before converting.\n</think>\n\n<tool_call>\n"
                      "{\"name\": \"fx_rate\", \"arguments\": {\"pair\": \"EURUSD\"}}\n</tool_call>",
        "expect": {"REASONING": ["I need today's exchange rate before converting."],
                   "ACTION": ["\"pair\": \"EURUSD\""]},
    },
    # ------------------------------------------------------------------ logs and text layouts
    {
        "name": "langchain_agent_executor_log",
        "convention": "LangChain AgentExecutor verbose=True output: chain banners, an unlabelled "
                      "first thought, Action / Action Input / Observation / Thought / Final Answer, "
                      "ANSI colour codes",
        "format": "langchain",
        "trajectory": f"\n\n{E}[1m> Entering new AgentExecutor chain...{E}[0m\n"
                      f"{E}[32;1m{E}[1;3m I should find the tallest mountain in Japan first.\n"
                      f"Action: Search\nAction Input: \"tallest mountain in Japan\"{E}[0m\n"
                      f"Observation: {E}[36;1m{E}[1;3mMount Fuji, 3776 m{E}[0m\n"
                      f"Thought:{E}[32;1m{E}[1;3m I now know the final answer.\n"
                      f"Final Answer: Mount Fuji (3776 m){E}[0m\n\n{E}[1m> Finished chain.{E}[0m\n",
        "expect": {"REASONING": ["I should find the tallest mountain in Japan first.", "I now know the final answer."],
                   "ACTION": ["Action: Search", "\"tallest mountain in Japan\"", "Final Answer: Mount Fuji (3776 m)"],
                   "OBSERVATION": ["Mount Fuji, 3776 m"],
                   "OTHER": ["> Entering new AgentExecutor chain...", "> Finished chain.", f"{E}[32;1m"]},
    },
    {
        "name": "react_run_log_with_harness_lines",
        "convention": "A ReAct HotpotQA run log as evaluation harnesses print it: a banner, the "
                      "trajectory, then the gold answer, a result dict and a score line",
        "format": "react",
        "trajectory": "==================== Episode 7 ====================\n"
                      "Question: Which country is the Matterhorn in, besides Switzerland?\n"
                      "Thought 1: The Matterhorn sits on a border; I should search it.\n"
                      "Action 1: Search[Matterhorn]\n"
                      "Observation 1: The Matterhorn lies on the main watershed between Switzerland and Italy.\n"
                      "Thought 2: So the other country is Italy.\nAction 2: Finish[Italy]\n"
                      "Correct answer: Italy\n{'reward': 1, 'em': True, 'f1': 1.0}\nReward: 1\n",
        "expect": {"PROMPT": ["Which country is the Matterhorn in"],
                   "REASONING": ["The Matterhorn sits on a border", "So the other country is Italy."],
                   "ACTION": ["Search[Matterhorn]", "Finish[Italy]"],
                   "OBSERVATION": ["between Switzerland and Italy."],
                   "OTHER": ["Correct answer: Italy", "{'reward': 1, 'em': True, 'f1': 1.0}", "Reward: 1",
                             "==================== Episode 7 ===================="]},
    },
    {
        "name": "webshop_reset_by_harness",
        "convention": "A WebShop log that starts with the harness's `Action: reset`; the first "
                      "observation is the instruction page",
        "format": "react",
        "trajectory": "Action: reset\nObservation: WebShop [SEP] Instruction: [SEP] i want a blue "
                      "cotton scarf under 20 dollars [SEP] Search\n"
                      "Action: search[blue cotton scarf]\n"
                      "Observation: [Back to Search] [SEP] B0SC4RF [SEP] Blue Cotton Scarf [SEP] $12.99\n"
                      "Action: think[B0SC4RF is blue, cotton and cheap enough.]\nObservation: OK.\n"
                      "Action: click[B0SC4RF]\n",
        "expect": {"PROMPT": ["i want a blue cotton scarf under 20 dollars"],
                   "REASONING": ["think[B0SC4RF is blue, cotton and cheap enough.]"],
                   "ACTION": ["search[blue cotton scarf]", "click[B0SC4RF]"],
                   "OBSERVATION": ["Blue Cotton Scarf [SEP] $12.99"],
                   "OTHER": ["Action: reset"]},
    },
    {
        "name": "reflexion_alfworld_new_plan",
        "convention": "Reflexion on ALFWorld: a failed trial, the harness's `STATUS: FAIL`, then "
                      "the agent's self-reflection after `New plan:`",
        "format": "alfworld",
        "trajectory": "You are in the middle of a room. You see a stoveburner 1 and a countertop 1.\n"
                      "Your task is to: heat some egg and put it in countertop.\n"
                      "> go to stoveburner 1\nOn the stoveburner 1, you see nothing.\n"
                      "> go to stoveburner 1\nNothing happens.\nSTATUS: FAIL\n"
                      "New plan: I went to the stove before finding the egg. Next time I will look for "
                      "the egg in the fridge first, then heat it with the microwave.\n",
        "expect": {"PROMPT": ["heat some egg and put it in countertop."],
                   "REASONING": ["I went to the stove before finding the egg.",
                                 "then heat it with the microwave."],
                   "ACTION": ["go to stoveburner 1"],
                   "OBSERVATION": ["Nothing happens.", "On the stoveburner 1, you see nothing."],
                   "OTHER": ["STATUS: FAIL"]},
    },
    {
        "name": "reflexion_hotpotqa_reflection",
        "convention": "Reflexion on HotpotQA: a ReAct trial that failed, then the agent's "
                      "`Reflection:`",
        "format": "react",
        "trajectory": "Question: Who wrote the novel that the film Vertigo was based on?\n"
                      "Thought 1: I think Vertigo was based on a novel by Daphne du Maurier.\n"
                      "Action 1: Finish[Daphne du Maurier]\n"
                      "Observation 1: Answer is INCORRECT\n"
                      "Reflection: I answered from memory without searching. Vertigo was adapted from "
                      "a French novel; next time I will search the film first.\n",
        "expect": {"PROMPT": ["Who wrote the novel that the film Vertigo"],
                   "REASONING": ["I answered from memory without searching.", "a novel by Daphne du Maurier."],
                   "ACTION": ["Finish[Daphne du Maurier]"],
                   "OBSERVATION": ["Answer is INCORRECT"]},
    },
    {
        "name": "codeact_smolagents",
        "convention": "smolagents CodeAct: Thought:, a fenced code block ending with <end_code>, "
                      "Observation:",
        "format": "codeact",
        "trajectory": "Task: How many days are in the year 2100?\n"
                      "Thought: 2100 is divisible by 100 but not by 400, so it is not a leap year. I will check in code.\n"
                      "Code:\n```py\nimport calendar\nprint(366 if calendar.isleap(2100) else 365)\n```<end_code>\n"
                      "Observation: 365\nThought: Confirmed.\nCode:\n```py\nfinal_answer(365)\n```<end_code>\n",
        "expect": {"PROMPT": ["How many days are in the year 2100?"],
                   "REASONING": ["so it is not a leap year.", "Confirmed."],
                   "ACTION": ["print(366 if calendar.isleap(2100) else 365)", "final_answer(365)"],
                   "OBSERVATION": ["365"]},
    },
    {
        "name": "react_few_shot_prompt_log",
        "convention": "A ReAct HotpotQA prompt log: the instruction, a solved example question, then "
                      "the real question and the agent's steps (the example is prompt)",
        "format": "react",
        "trajectory": "Solve a question answering task with interleaving Thought, Action, Observation steps.\n"
                      "Question: What is the capital of the country where the Eiffel Tower is?\n"
                      "Thought 1: The Eiffel Tower is in France, whose capital is Paris.\nAction 1: Finish[Paris]\n"
                      "Question: Which ocean is the Azores archipelago in?\n"
                      "Thought 1: I should search for the Azores.\nAction 1: Search[Azores]\n"
                      "Observation 1: The Azores lie in the North Atlantic Ocean.\n"
                      "Thought 2: So the answer is the Atlantic.\nAction 2: Finish[Atlantic Ocean]\n",
        "expect": {"PROMPT": ["The Eiffel Tower is in France, whose capital is Paris.", "Finish[Paris]",
                              "Which ocean is the Azores archipelago in?"],
                   "REASONING": ["I should search for the Azores.", "So the answer is the Atlantic."],
                   "ACTION": ["Search[Azores]", "Finish[Atlantic Ocean]"],
                   "OBSERVATION": ["The Azores lie in the North Atlantic Ocean."]},
    },
    {
        "name": "reflexion_hotpotqa_two_trials",
        "convention": "Reflexion on HotpotQA over two trials of the same question (a retry is the "
                      "agent's work, not a few-shot example)",
        "format": "react",
        "trajectory": "Question: What river flows through Vienna?\nThought 1: I believe it is the Rhine.\n"
                      "Action 1: Finish[Rhine]\nObservation 1: Answer is INCORRECT\n"
                      "Reflection: I guessed; I should search the city first.\n"
                      "Question: What river flows through Vienna?\nThought 1: Search Vienna this time.\n"
                      "Action 1: Search[Vienna]\nObservation 1: Vienna lies on the Danube.\n"
                      "Thought 2: It is the Danube.\nAction 2: Finish[Danube]\n",
        "expect": {"REASONING": ["I believe it is the Rhine.", "I guessed; I should search the city first.",
                                 "It is the Danube."],
                   "ACTION": ["Finish[Rhine]", "Search[Vienna]", "Finish[Danube]"],
                   "OBSERVATION": ["Answer is INCORRECT", "Vienna lies on the Danube."]},
    },
    # ------------------------------------------------------------------ more layouts
    {
        "name": "mistral_inst_tool_calls",
        "convention": "Mistral instruct template: <s>[INST] ... [/INST] answer</s>, "
                      "[TOOL_CALLS] with the calls as JSON, [TOOL_RESULTS] ... [/TOOL_RESULTS]",
        "format": "mistral",
        "trajectory": "<s>[INST] Which is bigger, 2**100 or 10**30? [/INST][TOOL_CALLS] "
                      "[{\"name\": \"python\", \"arguments\": {\"code\": \"print(2**100 > 10**30)\"}}]</s>"
                      "[TOOL_RESULTS] {\"content\": \"True\"}[/TOOL_RESULTS] 2**100 is bigger than 10**30.</s>",
        "expect": {"PROMPT": ["Which is bigger, 2**100 or 10**30?"],
                   "ACTION": ["\"code\": \"print(2**100 > 10**30)\"", "2**100 is bigger than 10**30."],
                   "OBSERVATION": ["{\"content\": \"True\"}"],
                   "OTHER": ["[INST]", "[/INST]", "</s>"]},
    },
    {
        "name": "llama2_inst_sys",
        "convention": "Llama 2 chat template: <s>[INST] <<SYS>> system <</SYS>> user [/INST] answer </s>",
        "format": "mistral",
        "trajectory": "<s>[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>\n\nWhat colour is the sky on a clear day? [/INST] "
                      "Blue. </s><s>[INST] And at sunset? [/INST] Orange. </s>",
        "expect": {"PROMPT": ["Answer in one word.", "What colour is the sky on a clear day?", "And at sunset?"],
                   "ACTION": ["Blue.", "Orange."],
                   "OTHER": ["<<SYS>>", "[/INST]"]},
    },
    {
        "name": "gemma_turns",
        "convention": "Gemma chat template: <bos><start_of_turn>user ... <end_of_turn>, model turns",
        "format": "gemma",
        "trajectory": "<bos><start_of_turn>user\nGive me a synonym of quick.<end_of_turn>\n"
                      "<start_of_turn>model\n<think>Common synonyms: fast, rapid, swift.</think>Swift.<end_of_turn>\n",
        "expect": {"PROMPT": ["Give me a synonym of quick."],
                   "REASONING": ["Common synonyms: fast, rapid, swift."],
                   "ACTION": ["Swift."],
                   "OTHER": ["<start_of_turn>model", "<end_of_turn>", "<bos>"]},
    },
    {
        "name": "zephyr_phi3_turns",
        "convention": "Phi-3 chat template: <|system|> / <|user|> / <|assistant|> turns ending with <|end|>",
        "format": "zephyr",
        "trajectory": "<|system|>\nYou are terse.<|end|>\n<|user|>\nCapital of Peru?<|end|>\n"
                      "<|assistant|>\nLima.<|end|>\n",
        "expect": {"PROMPT": ["You are terse.", "Capital of Peru?"], "ACTION": ["Lima."],
                   "OTHER": ["<|assistant|>", "<|end|>"]},
    },
    {
        "name": "alpaca_instruction_response",
        "convention": "Alpaca prompt: a preamble, ### Instruction:, ### Response:",
        "format": "plain",
        "trajectory": "Below is an instruction that describes a task. Write a response that completes it.\n\n"
                      "### Instruction:\nList three prime numbers.\n\n### Response:\n2, 3 and 5.",
        "expect": {"PROMPT": ["Below is an instruction that describes a task.", "List three prime numbers."],
                   "ACTION": ["2, 3 and 5."], "OTHER": ["### Response:"]},
    },
    {
        "name": "chat_react_environment_without_prefix",
        "convention": "An agent-benchmark conversation in chat messages: the environment's replies "
                      "are plain user messages after the agent's `ACTION:` (no `Observation:` prefix); "
                      "after the final answer the user asks something new",
        "format": "chat",
        "trajectory": [
            {"role": "user", "content": "You control a household robot. Answer with THOUGHT: and ACTION:.\n"
                                        "Your task is to: find a mug."},
            {"role": "assistant", "content": "THOUGHT: Mugs are usually in the cabinet.\nACTION: open cabinet 1"},
            {"role": "user", "content": "You open the cabinet 1. In it, you see a mug 3."},
            {"role": "assistant", "content": "THOUGHT: Found it.\nACTION: finish[mug 3 is in cabinet 1]"},
            {"role": "user", "content": "Thanks. Now tell me which room you are in."},
            {"role": "assistant", "content": "I am in the kitchen."},
        ],
        "expect": {"PROMPT": ["Your task is to: find a mug.", "Thanks. Now tell me which room you are in."],
                   "REASONING": ["Mugs are usually in the cabinet.", "Found it."],
                   "ACTION": ["open cabinet 1", "finish[mug 3 is in cabinet 1]", "I am in the kitchen."],
                   "OBSERVATION": ["You open the cabinet 1. In it, you see a mug 3."]},
    },
    {
        "name": "alfworld_few_shot_prompt",
        "convention": "ReAct ALFWorld prompt log: a solved example, `Here is the task.`, then the "
                      "real episode (the example is prompt, not the agent's work)",
        "format": "alfworld",
        "trajectory": "Interact with a household to solve a task. Here is an example.\n"
                      "You are in the middle of a room. You see a table 1.\nYour task is to: look at a book.\n"
                      "> think: The book should be on the table.\nOK.\n> go to table 1\nOn the table 1, you see a book 1.\n"
                      "Here is the task.\nYou are in the middle of a room. You see a bed 1 and a desk 1.\n"
                      "Your task is to: put a pillow on the desk.\n> think: Pillows are on beds.\nOK.\n"
                      "> go to bed 1\nOn the bed 1, you see a pillow 1.\n",
        "expect": {"PROMPT": ["> think: The book should be on the table.", "> go to table 1",
                              "On the table 1, you see a book 1.", "put a pillow on the desk."],
                   "REASONING": ["Pillows are on beds."],
                   "ACTION": ["> go to bed 1"],
                   "OBSERVATION": ["On the bed 1, you see a pillow 1."]},
    },
    {
        "name": "smolagents_step_log",
        "convention": "smolagents run log: box-drawing step banners, Thought: and <code>, "
                      "`Execution logs:`, the step footer",
        "format": "codeact",
        "trajectory": "━━━━━━━━━━━━━━━━━━━━━━ Step 1 ━━━━━━━━━━━━━━━━━━━━━━\n"
                      "Thought: I will compute the factorial directly.\n<code>\nimport math\nprint(math.factorial(6))\n</code>\n"
                      "Execution logs:\n720\n"
                      "[Step 1: Duration 0.84 seconds| Input tokens: 1,204 | Output tokens: 41]\n",
        "expect": {"REASONING": ["I will compute the factorial directly."],
                   "ACTION": ["print(math.factorial(6))"],
                   "OBSERVATION": ["720"],
                   "OTHER": ["[Step 1: Duration 0.84 seconds| Input tokens: 1,204 | Output tokens: 41]",
                             "━━━━━━━━━━━━━━━━━━━━━━ Step 1 ━━━━━━━━━━━━━━━━━━━━━━"]},
    },
    {
        "name": "anthropic_function_calls_text",
        "convention": "A Claude-style text transcript: Human:/Assistant:, <function_calls> with "
                      "<invoke>, and <function_results> written into the assistant turn",
        "format": "plain",
        "trajectory": "Human: How big is /data/log.txt?\n\nAssistant: I will check its size.\n<function_calls>\n"
                      "<invoke name=\"stat\">\n<parameter name=\"path\">/data/log.txt</parameter>\n</invoke>\n"
                      "</function_calls>\n<function_results>\n<result>\n<stdout>2048 bytes</stdout>\n</result>\n"
                      "</function_results>\nThe file is 2048 bytes.\n",
        "expect": {"PROMPT": ["How big is /data/log.txt?"],
                   "REASONING": ["I will check its size."],
                   "ACTION": ["<parameter name=\"path\">/data/log.txt</parameter>", "The file is 2048 bytes."],
                   "OBSERVATION": ["<stdout>2048 bytes</stdout>"]},
    },
    {
        "name": "webarena_inline_fence_action",
        "convention": "WebArena-style agent turns: step-by-step prose ending with `In summary, the next "
                      "action I will perform is ```click [id]````; `OBSERVATION:` accessibility trees",
        "format": "chat",
        "trajectory": [
            {"role": "system", "content": "You are a web agent. Issue one action per turn inside triple backticks."},
            {"role": "user", "content": "OBJECTIVE: open the orders page.\nOBSERVATION:\n[12] link 'Orders'\n[13] link 'Help'"},
            {"role": "assistant", "content": "Let's think step-by-step. The page has a link called Orders with id 12. "
                                             "In summary, the next action I will perform is ```click [12]```"},
            {"role": "user", "content": "OBSERVATION:\n[40] heading 'Your orders'\n[41] table 'order list'"},
            {"role": "assistant", "content": "The orders page is open, so the objective is met. "
                                             "In summary, the next action I will perform is ```stop [done]```"},
        ],
        "expect": {"PROMPT": ["OBJECTIVE: open the orders page.", "[12] link 'Orders'"],
                   "REASONING": ["The page has a link called Orders with id 12.",
                                 "The orders page is open, so the objective is met."],
                   "ACTION": ["```click [12]```", "```stop [done]```"],
                   "OBSERVATION": ["[40] heading 'Your orders'"]},
    },
    {
        "name": "autogpt_json_thoughts_command",
        "convention": "AutoGPT-style agent replies: one JSON object with `thoughts` (text, reasoning, "
                      "plan, criticism, speak) and `command` (name, args); the command result comes back "
                      "as a `Command ... returned:` message",
        "format": "chat",
        "trajectory": [
            {"role": "system", "content": "You are FileBot. Respond only in the JSON format described."},
            {"role": "user", "content": "Determine which command to use next."},
            {"role": "assistant", "content": json.dumps({
                "thoughts": {"text": "I should read the todo file first.", "reasoning": "It lists the tasks.",
                             "plan": "- read todo.txt\n- summarise it", "criticism": "Keep it short."},
                "command": {"name": "read_file", "args": {"filename": "todo.txt"}}}, indent=2)},
            {"role": "user", "content": "Command read_file returned: buy milk; call Ana"},
        ],
        "expect": {"PROMPT": ["Determine which command to use next."],
                   "REASONING": ["I should read the todo file first.", "Keep it short."],
                   "ACTION": ["\"name\": \"read_file\"", "\"filename\": \"todo.txt\""],
                   "OBSERVATION": ["buy milk; call Ana"]},
    },
    {
        "name": "langchain_json_agent_in_chat",
        "convention": "LangChain JSON chat agent: the assistant replies with {\"action\", \"action_input\"}; "
                      "the tool output comes back in the next user turn; a final `Final Answer` action",
        "format": "chat",
        "trajectory": [
            {"role": "user", "content": "How many moons does Mars have?"},
            {"role": "assistant", "content": "{\"action\": \"wiki_search\", \"action_input\": \"Mars moons\"}"},
            {"role": "user", "content": "Mars has two moons, Phobos and Deimos."},
            {"role": "assistant", "content": "{\"action\": \"Final Answer\", \"action_input\": \"Two: Phobos and Deimos.\"}"},
        ],
        "expect": {"PROMPT": ["How many moons does Mars have?"],
                   "ACTION": ["\"action_input\": \"Mars moons\"", "Two: Phobos and Deimos."],
                   "OBSERVATION": ["Mars has two moons, Phobos and Deimos."]},
    },
    {
        "name": "glaive_function_calling_text",
        "convention": "glaive function-calling text: SYSTEM:/USER:/ASSISTANT: turns, `<functioncall>` "
                      "with the JSON call, `<|endoftext|>`, `FUNCTION RESPONSE:` turns",
        "format": "plain",
        "trajectory": "SYSTEM: You are a helpful assistant with access to the function convert_currency.\n\n\n"
                      "USER: How much is 100 EUR in JPY?\n\n\n"
                      "ASSISTANT: <functioncall> {\"name\": \"convert_currency\", \"arguments\": "
                      "'{\"amount\": 100, \"from\": \"EUR\", \"to\": \"JPY\"}'} <|endoftext|>\n\n\n"
                      "FUNCTION RESPONSE: {\"converted\": 16250}\n\n\n"
                      "ASSISTANT: 100 EUR is about 16250 JPY. <|endoftext|>\n",
        "expect": {"PROMPT": ["How much is 100 EUR in JPY?", "with access to the function convert_currency."],
                   "ACTION": ["\"name\": \"convert_currency\"", "100 EUR is about 16250 JPY."],
                   "OBSERVATION": ["{\"converted\": 16250}"],
                   "OTHER": ["<|endoftext|>", "FUNCTION RESPONSE:"]},
    },
    {
        "name": "cohere_command_r_turns",
        "convention": "Command-R chat template: <BOS_TOKEN>, <|START_OF_TURN_TOKEN|><|USER_TOKEN|> / "
                      "<|CHATBOT_TOKEN|> ... <|END_OF_TURN_TOKEN|>",
        "format": "cohere",
        "trajectory": "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Translate 'thank you' to Dutch."
                      "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Dank je wel."
                      "<|END_OF_TURN_TOKEN|>",
        "expect": {"PROMPT": ["Translate 'thank you' to Dutch."], "ACTION": ["Dank je wel."],
                   "OTHER": ["<|CHATBOT_TOKEN|>", "<BOS_TOKEN>"]},
    },
    {
        "name": "granite_roles",
        "convention": "Granite chat template: <|start_of_role|>role<|end_of_role|> ... <|end_of_text|>, "
                      "`tool_response` turns",
        "format": "granite",
        "trajectory": "<|start_of_role|>user<|end_of_role|>Is port 8080 open?<|end_of_text|>\n"
                      "<|start_of_role|>assistant<|end_of_role|><tool_call>{\"name\": \"port_check\", "
                      "\"arguments\": {\"port\": 8080}}</tool_call><|end_of_text|>\n"
                      "<|start_of_role|>tool_response<|end_of_role|>{\"open\": false}<|end_of_text|>\n"
                      "<|start_of_role|>assistant<|end_of_role|>No, port 8080 is closed.<|end_of_text|>\n",
        "expect": {"PROMPT": ["Is port 8080 open?"],
                   "ACTION": ["\"port\": 8080", "No, port 8080 is closed."],
                   "OBSERVATION": ["{\"open\": false}"]},
    },
    {
        "name": "openhands_event_stream",
        "convention": "OpenHands trajectory export: a list of events with `source`, `action` + `args` "
                      "(thought, command, code) or `observation` + `content`; agent state changes",
        "format": "openhands",
        "trajectory": [
            {"id": 0, "source": "agent", "action": "system", "args": {"content": "You are OpenHands agent."}},
            {"id": 1, "source": "user", "action": "message", "args": {"content": "How many .py files are in src?",
                                                                      "image_urls": None}},
            {"id": 2, "source": "environment", "observation": "agent_state_changed", "content": "",
             "extras": {"agent_state": "running"}},
            {"id": 3, "source": "agent", "action": "run", "message": "Running command: ls src | wc -l",
             "args": {"command": "ls src/*.py | wc -l", "is_input": False, "thought": "I will count them with ls.",
                      "blocking": False}},
            {"id": 4, "source": "agent", "observation": "run", "cause": 3, "content": "7",
             "extras": {"command": "ls src/*.py | wc -l", "metadata": {"exit_code": 0}}},
            {"id": 5, "source": "agent", "action": "finish",
             "args": {"final_thought": "There are 7 Python files in src.", "outputs": {}, "thought": ""}},
        ],
        "expect": {"PROMPT": ["How many .py files are in src?", "You are OpenHands agent."],
                   "REASONING": ["I will count them with ls."],
                   "ACTION": ["ls src/*.py | wc -l", "There are 7 Python files in src."],
                   "OBSERVATION": ["7"]},
    },
    {
        "name": "hermes_function_calling_sharegpt",
        "convention": "Hermes function-calling data in ShareGPT form: tools inside <tools> in the system "
                      "turn, calls written as Python dict literals in <tool_call>, tool turns already "
                      "wrapped in <tool_response>",
        "format": "sharegpt",
        "trajectory": {"conversations": [
            {"from": "system", "value": "You are a function calling AI model. <tools> [{'name': 'get_fx', "
                                        "'parameters': {'pair': 'string'}}] </tools>"},
            {"from": "human", "value": "What is the EUR/CHF rate?"},
            {"from": "gpt", "value": "<tool_call>\n{'arguments': {'pair': 'EURCHF'}, 'name': 'get_fx'}\n</tool_call>"},
            {"from": "tool", "value": "<tool_response>\n{'rate': 0.94}\n</tool_response>"},
            {"from": "gpt", "value": "One euro is 0.94 Swiss francs."}]},
        "expect": {"PROMPT": ["What is the EUR/CHF rate?", "'name': 'get_fx'"],
                   "ACTION": ["{'arguments': {'pair': 'EURCHF'}, 'name': 'get_fx'}", "One euro is 0.94 Swiss francs."],
                   "OBSERVATION": ["{'rate': 0.94}"]},
    },
    {
        "name": "smolagents_tool_calling_agent",
        "convention": "smolagents ToolCallingAgent log: `Action:` followed by the call as a multi-line "
                      "JSON object, `Observation:`",
        "format": "react",
        "trajectory": "Task: What is the weather in Rome?\nThought: I will call the weather tool.\nAction:\n"
                      "{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Rome\"}\n}\n"
                      "Observation: sunny, 24 C\nThought: I can answer now.\nAction:\n"
                      "{\n  \"name\": \"final_answer\",\n  \"arguments\": {\"answer\": \"Sunny, 24 C\"}\n}\n",
        "expect": {"PROMPT": ["What is the weather in Rome?"],
                   "REASONING": ["I will call the weather tool.", "I can answer now."],
                   "ACTION": ["\"name\": \"get_weather\"", "\"answer\": \"Sunny, 24 C\""],
                   "OBSERVATION": ["sunny, 24 C"]},
    },
    {
        "name": "openai_image_part_and_empty_think",
        "convention": "OpenAI messages with an image part next to the text (no characters to label) and "
                      "a Qwen3 answer with an empty <think></think>",
        "format": "chat",
        "trajectory": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
                                         {"type": "text", "text": "What animal is in the picture?"}]},
            {"role": "assistant", "content": "<think>\n\n</think>\n\nDone: it is a cat."},
        ],
        "expect": {"PROMPT": ["What animal is in the picture?"], "ACTION": ["Done: it is a cat."]},
    },
    {
        "name": "langchain_conversational_ai_prefix",
        "convention": "LangChain conversational ReAct agent: `Do I need to use a tool?` thoughts and the "
                      "reply after `AI:`",
        "format": "langchain",
        "trajectory": "\n\n> Entering new AgentExecutor chain...\nThought: Do I need to use a tool? Yes\n"
                      "Action: Calculator\nAction Input: 2^10\nObservation: Answer: 1024\n"
                      "Thought: Do I need to use a tool? No\nAI: 2^10 is 1024.\n\n> Finished chain.\n",
        "expect": {"REASONING": ["Do I need to use a tool? Yes", "Do I need to use a tool? No"],
                   "ACTION": ["Action Input: 2^10", "AI: 2^10 is 1024."],
                   "OBSERVATION": ["Answer: 1024"], "OTHER": ["> Finished chain."]},
    },
    {
        "name": "gemini_contents_function_call",
        "convention": "Gemini API contents: roles user / model, `parts` with text, functionCall "
                      "{name, args} and functionResponse {name, response}",
        "format": "chat",
        "trajectory": {"messages": [
            {"role": "user", "parts": [{"text": "Turn on the kitchen lights."}]},
            {"role": "model", "parts": [{"text": "Switching them on."},
                                        {"functionCall": {"name": "set_light", "args": {"room": "kitchen", "on": True}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "set_light", "response": {"status": "on"}}}]},
            {"role": "model", "parts": [{"text": "The kitchen lights are on."}]},
        ]},
        "expect": {"PROMPT": ["Turn on the kitchen lights."],
                   "REASONING": ["Switching them on."],
                   "ACTION": ["set_light", "\"room\": \"kitchen\"", "The kitchen lights are on."],
                   "OBSERVATION": ["\"status\": \"on\""]},
    },
    {
        "name": "swe_agent_history_ends_with_submit",
        "convention": "SWE-agent history whose last assistant message is the `submit` command with no "
                      "observation after it (the episode's commands are fenced throughout)",
        "format": "swe-agent",
        "trajectory": {"history": [
            {"role": "user", "content": "Fix the off-by-one in range_sum()."},
            {"role": "assistant", "content": "Let me edit line 4.\n\n```\nedit 4:4\n    return sum(range(n + 1))\nend_of_edit\n```"},
            {"role": "user", "content": "File updated.\n(Open file: /repo/util.py)\n(Current directory: /repo)\nbash-$"},
            {"role": "assistant", "content": "The fix is in; I will submit.\n\n```\nsubmit\n```"},
        ]},
        "expect": {"PROMPT": ["Fix the off-by-one in range_sum()."],
                   "REASONING": ["Let me edit line 4.", "The fix is in; I will submit."],
                   "ACTION": ["return sum(range(n + 1))", "submit"],
                   "OBSERVATION": ["File updated."]},
    },
    {
        "name": "webshop_few_shot_prompt",
        "convention": "A ReAct WebShop prompt log: one solved example (Instruction: on its own line), then "
                      "the real instruction and the agent's actions",
        "format": "react",
        "trajectory": "Webshop\nInstruction:\ni would like a pack of green tea under 10 dollars\n[Search]\n\n"
                      "Action: search[green tea pack]\nObservation: [B0TEA1] Green Tea 20 bags $6\n"
                      "Action: click[B0TEA1]\nObservation: You have clicked B0TEA1.\n\n"
                      "WebShop\nInstruction:\ni need a black phone case for a small phone\n[Search]\n\n"
                      "Action: search[black phone case small]\nObservation: [B0CASE9] Slim Black Case $8\n"
                      "Action: think[B0CASE9 is black and slim.]\nObservation: OK.\nAction: click[B0CASE9]\n",
        "expect": {"PROMPT": ["search[green tea pack]", "click[B0TEA1]", "i need a black phone case for a small phone"],
                   "REASONING": ["think[B0CASE9 is black and slim.]"],
                   "ACTION": ["search[black phone case small]", "click[B0CASE9]"],
                   "OBSERVATION": ["[B0CASE9] Slim Black Case $8"]},
    },
    {
        "name": "autogen_console_log",
        "convention": "AutoGen two-agent console output: `name (to name):` headers, dashed separators, "
                      "the executor banner, `exitcode: 0 (execution succeeded)` replies, TERMINATE",
        "format": "autogen",
        "trajectory": "user_proxy (to assistant):\n\nWhat is the 10th Fibonacci number?\n\n"
                      "--------------------------------------------------------------------------------\n"
                      "assistant (to user_proxy):\n\nI will compute it with a short loop.\n```python\n"
                      "a, b = 0, 1\nfor _ in range(10):\n    a, b = b, a + b\nprint(a)\n```\n\n"
                      "--------------------------------------------------------------------------------\n"
                      ">>>>>>>> EXECUTING CODE BLOCK 0 (inferred language is python)...\n"
                      "user_proxy (to assistant):\n\nexitcode: 0 (execution succeeded)\nCode output: \n55\n\n"
                      "--------------------------------------------------------------------------------\n"
                      "assistant (to user_proxy):\n\nThe 10th Fibonacci number is 55.\nTERMINATE\n",
        "expect": {"PROMPT": ["What is the 10th Fibonacci number?"],
                   "REASONING": ["I will compute it with a short loop."],
                   "ACTION": ["a, b = b, a + b", "The 10th Fibonacci number is 55."],
                   "OBSERVATION": ["exitcode: 0 (execution succeeded)", "55"],
                   "OTHER": [">>>>>>>> EXECUTING CODE BLOCK 0 (inferred language is python)...",
                             "assistant (to user_proxy):"]},
    },
    {
        "name": "crewai_verbose_log",
        "convention": "CrewAI verbose output: `# Agent:`, `## Task:`, `## Thought:`, `## Using tool:`, "
                      "`## Tool Input:`, `## Tool Output:`, `## Final Answer:`",
        "format": "crewai",
        "trajectory": "# Agent: Market Researcher\n## Task: Find the release year of the first iPhone.\n\n"
                      "## Thought: I should search the web for this.\n## Using tool: web_search\n"
                      "## Tool Input: \n\"{\\\"query\\\": \\\"first iPhone release year\\\"}\"\n"
                      "## Tool Output: \nThe first iPhone was released in 2007.\n\n"
                      "# Agent: Market Researcher\n## Final Answer: \n2007\n",
        "expect": {"PROMPT": ["Find the release year of the first iPhone."],
                   "REASONING": ["I should search the web for this."],
                   "ACTION": ["## Using tool: web_search", "first iPhone release year", "2007\n"],
                   "OBSERVATION": ["The first iPhone was released in 2007."],
                   "OTHER": ["# Agent: Market Researcher"]},
    },
    {
        "name": "llamaindex_react_answer",
        "convention": "LlamaIndex ReAct agent output: Thought / Action / Action Input / Observation, "
                      "then `Thought: I can answer ...` and `Answer:`",
        "format": "react",
        "trajectory": "Thought: The current language of the user is English. I need a tool to multiply.\n"
                      "Action: multiply\nAction Input: {\"a\": 7, \"b\": 6}\nObservation: 42\n"
                      "Thought: I can answer without using any more tools.\nAnswer: 7 times 6 is 42.\n",
        "expect": {"REASONING": ["I need a tool to multiply.", "I can answer without using any more tools."],
                   "ACTION": ["Action: multiply", "{\"a\": 7, \"b\": 6}", "Answer: 7 times 6 is 42."],
                   "OBSERVATION": ["Observation: 42"]},
    },
    {
        "name": "alpaca_with_history",
        "convention": "LLaMA-Factory alpaca format: instruction, input, output, system, history pairs",
        "format": "alpaca",
        "trajectory": {"system": "You are a math helper.", "history": [["What is 3 + 4?", "3 + 4 = 7."]],
                       "instruction": "Now multiply that by two.", "input": "", "output": "7 * 2 = 14."},
        "expect": {"PROMPT": ["You are a math helper.", "What is 3 + 4?", "Now multiply that by two."],
                   "ACTION": ["3 + 4 = 7.", "7 * 2 = 14."]},
    },
    {
        "name": "xlam_function_calling_sample",
        "convention": "APIGen / xLAM function-calling sample: query, tools and answers as JSON strings",
        "format": "xlam",
        "trajectory": {"query": "Find the area of a circle with radius 3.",
                       "tools": json.dumps([{"name": "circle_area", "description": "Area of a circle",
                                             "parameters": {"radius": {"type": "float"}}}]),
                       "answers": json.dumps([{"name": "circle_area", "arguments": {"radius": 3}}])},
        "expect": {"PROMPT": ["Find the area of a circle with radius 3.", "Area of a circle"],
                   "ACTION": ["circle_area", "\"radius\": 3"]},
    },
    {
        "name": "dspy_react_trajectory",
        "convention": "DSPy ReAct trajectory dict: thought_i, tool_name_i, tool_args_i, observation_i",
        "format": "dspy",
        "trajectory": {"thought_0": "I need the population of Lyon.", "tool_name_0": "search",
                       "tool_args_0": {"query": "Lyon population"}, "observation_0": "Lyon has 522,000 inhabitants.",
                       "thought_1": "I have what I need.", "tool_name_1": "finish", "tool_args_1": {},
                       "observation_1": "Completed."},
        "expect": {"REASONING": ["I need the population of Lyon.", "I have what I need."],
                   "ACTION": ["\"query\": \"Lyon population\"", "finish"],
                   "OBSERVATION": ["Lyon has 522,000 inhabitants."]},
    },
    {
        "name": "react_notebook_episode_output",
        "convention": "The ReAct notebooks' printed episode: the trajectory, the wrapper's "
                      "`Episode finished, reward = 1` observation, the info dict, a tally line and a "
                      "dashed separator",
        "format": "react",
        "trajectory": "Question: Is the Danube longer than the Rhine?\n"
                      "Thought 1: I should compare their lengths.\nAction 1: Search[Danube]\n"
                      "Observation 1: The Danube is 2,850 km long.\n"
                      "Thought 2: The Rhine is about 1,230 km, so yes.\nAction 2: Finish[yes]\n"
                      "Observation 2: Episode finished, reward = 1\n\n"
                      "{'steps': 2, 'answer': 'yes', 'gt_answer': 'yes', 'question_idx': 412, 'reward': True, "
                      "'em': True, 'f1': 1.0}\n1 1 1.0 4.2\n-----------\n",
        "expect": {"PROMPT": ["Is the Danube longer than the Rhine?"],
                   "REASONING": ["I should compare their lengths.", "The Rhine is about 1,230 km, so yes."],
                   "ACTION": ["Search[Danube]", "Finish[yes]"],
                   "OBSERVATION": ["The Danube is 2,850 km long."],
                   "OTHER": ["Observation 2: Episode finished, reward = 1", "'gt_answer': 'yes'", "1 1 1.0 4.2",
                             "-----------"]},
    },
    {
        "name": "reflexion_alfworld_trial_log",
        "convention": "A Reflexion ALFWorld trial log: `#####` banners, `Environment #0:` and `Trial #1:` "
                      "headers, the memory of the earlier trial in the prompt, STATUS",
        "format": "alfworld",
        "trajectory": "#####################################\nEnvironment #0:\nTrial #1:\n"
                      "Your memory for the task below:\nTrial 0:\nI looked in the drawer before the desk; "
                      "the key was on the desk.\nHere is the task:\n"
                      "You are in the middle of a room. You see a desk 1 and a drawer 1.\n"
                      "Your task is to: take the key.\n> go to desk 1\nOn the desk 1, you see a key 1.\n"
                      "> take key 1 from desk 1\nYou pick up the key 1 from the desk 1.\nSTATUS: OK\n"
                      "#####################################\n",
        "expect": {"PROMPT": ["I looked in the drawer before the desk; the key was on the desk.", "take the key."],
                   "ACTION": ["> go to desk 1", "> take key 1 from desk 1"],
                   "OBSERVATION": ["On the desk 1, you see a key 1.", "You pick up the key 1 from the desk 1."],
                   "OTHER": ["Environment #0:", "Trial #1:", "STATUS: OK", "#####################################"]},
    },
    {
        "name": "plain_after_bos_token",
        "convention": "A Vicuna-style conversation rendered with its BOS token: <s>USER: ... ASSISTANT: ...</s>",
        "format": "plain",
        "trajectory": "<s>USER: Spell 'cat' backwards. ASSISTANT: tac</s>",
        "expect": {"PROMPT": ["Spell 'cat' backwards."], "ACTION": ["tac"], "OTHER": ["<s>USER:", "</s>"]},
    },
    {
        "name": "completion_think_then_react_steps",
        "convention": "A raw completion that opens with <think> and then writes ReAct steps",
        "format": "completion",
        "trajectory": "<think>\nThe user wants the boiling point of water at sea level; I will look it up.\n</think>\n"
                      "Action: lookup[boiling point of water]\nObservation: 100 degrees Celsius at 1 atm.\n"
                      "Final Answer: 100 C\n",
        "expect": {"REASONING": ["I will look it up."],
                   "ACTION": ["lookup[boiling point of water]", "Final Answer: 100 C"],
                   "OBSERVATION": ["100 degrees Celsius at 1 atm."]},
    },
    {
        "name": "agentbench_turns_with_acknowledgement",
        "convention": "An AgentBench-style turn list that starts with the instructions, the agent's `OK.`, "
                      "then `Here is your task.` (a prompt, not an observation) and the episode",
        "format": "turns",
        "trajectory": [
            "You are an agent in a text household. Answer with THOUGHT: and ACTION: lines.",
            "OK.",
            "Here is your task. You are in a kitchen with a fridge 1.\nYour task is to: find an egg.",
            "THOUGHT: Eggs are kept cold.\nACTION: open fridge 1",
            "You open the fridge 1. In it, you see an egg 1.",
        ],
        "expect": {"PROMPT": ["Here is your task. You are in a kitchen", "Your task is to: find an egg."],
                   "REASONING": ["Eggs are kept cold."],
                   "ACTION": ["open fridge 1", "OK."],
                   "OBSERVATION": ["In it, you see an egg 1."]},
    },
    {
        "name": "langchain_functions_agent_log",
        "convention": "LangChain tool-calling AgentExecutor verbose output: `Invoking: `tool` with `{...}``, "
                      "the tool's output in its colour, then the answer in green on the same line",
        "format": "langchain",
        "trajectory": f"\n\n{E}[1m> Entering new AgentExecutor chain...{E}[0m\n{E}[32;1m{E}[1;3m\n"
                      f"Invoking: `weather_search` with `{{'city': 'Oslo'}}`\n\n\n{E}[0m"
                      f"{E}[36;1m{E}[1;3m[{{'city': 'Oslo', 'sky': 'snow', 'c': -3}}]{E}[0m"
                      f"{E}[32;1m{E}[1;3mIt is snowing in Oslo at -3 C.{E}[0m\n\n{E}[1m> Finished chain.{E}[0m\n",
        "expect": {"ACTION": ["Invoking: `weather_search` with `{'city': 'Oslo'}`", "It is snowing in Oslo at -3 C."],
                   "OBSERVATION": ["[{'city': 'Oslo', 'sky': 'snow', 'c': -3}]"],
                   "OTHER": ["> Entering new AgentExecutor chain...", "> Finished chain."]},
    },
]


def main():
  path = pathlib.Path(__file__).with_name("conventions.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for rec in RECORDS:
      f.write(json.dumps(rec, ensure_ascii=False) + "\n")
  print(f"wrote {len(RECORDS)} records to {path}")


if __name__ == "__main__":
  main()
