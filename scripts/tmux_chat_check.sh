#!/usr/bin/env bash
# Drive `svip-local chat` in a real terminal: tmux at 80x24 by default, keys sent with
# send-keys, text pasted as a terminal pastes it (bracketed paste: load-buffer, paste-buffer -p),
# the screen read with capture-pane. Checks that the app loads; that a line typed, Ctrl+J and a
# pasted 4-line function arrive whole in one message (the prompt shows every line, and the
# saved conversation holds exactly that text); that a reply appears and the status line shows
# tok/s, acceptance and the comparison with the target alone with its source; that
# `/attach FILE` puts the file in the prompt as a fenced block and Enter then sends it; that
# a pasted 30-line module arrives whole and, asked back with docstrings, the reply's status
# line shows that `auto` copied it (`auto → lookup N%`); and that Ctrl+C quits with exit status
# 0. Prints the captured screens.
#
#   scripts/tmux_chat_check.sh                                 # the real pair (pulled if needed)
#   scripts/tmux_chat_check.sh --target T.gguf --draft D.gguf  # any files
#
# Environment: COLS, ROWS (terminal size), POLICY (default auto), MAX_TOKENS (default 320),
# LOAD_TIMEOUT and REPLY_TIMEOUT (seconds), SVIP_LOCAL (the command). Conversations are saved
# in a temporary SVIP_LOCAL_DATA_DIR (removed at the end), not among the user's own.
set -euo pipefail

COLS=${COLS:-80}
ROWS=${ROWS:-24}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}
REPLY_TIMEOUT=${REPLY_TIMEOUT:-300}
SVIP_LOCAL=${SVIP_LOCAL:-svip-local}
if [ $# -eq 0 ]; then
    set -- qwen2.5-coder-1.5b --yes
fi
POLICY=${POLICY:-auto}
ARGS=("$@" --policy "$POLICY" --max-tokens "${MAX_TOKENS:-320}")

WORK=$(mktemp -d)
SESSION="svip-chat-check-$$"
t() { tmux -L "$SESSION" "$@"; }  # a private tmux server: other sessions stay untouched
t new-session -d -s "$SESSION" -x "$COLS" -y "$ROWS" -c "$WORK" \
    "SVIP_LOCAL_DATA_DIR=$(printf '%q' "$WORK/data") $(printf '%q ' "$SVIP_LOCAL" chat "${ARGS[@]}");
     echo \"EXIT=\$?\"; sleep 600"
trap 't kill-server 2>/dev/null || true; rm -rf "$WORK"' EXIT

screen() { t capture-pane -p -t "$SESSION"; }

wait_for() {  # wait_for REGEX SECONDS WHAT
    local deadline=$((SECONDS + $2))
    until screen | grep -Eq -- "$1"; do
        if [ $SECONDS -ge $deadline ]; then
            screen
            echo "FAIL: no '$3' within $2 s" >&2
            exit 1
        fi
        sleep 1
    done
}

fail=0
check() {  # check REGEX WHAT (on $captured)
    if ! grep -Eq -- "$1" <<<"$captured"; then
        echo "FAIL: $2" >&2
        fail=1
    fi
}

# The user messages of the saved conversation, as JSON strings, one per line.
sent_messages() {
    python3 - "$WORK/data/conversations" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    for m in json.loads(path.read_text("utf-8"))["messages"]:
        if m["role"] == "user":
            print(json.dumps(m["content"]))
EOF
}

replies() {  # how many replies the saved conversation holds
    python3 - "$WORK/data/conversations" <<'EOF'
import json, pathlib, sys
print(sum(m["role"] == "assistant" for path in pathlib.Path(sys.argv[1]).glob("*.json")
          for m in json.loads(path.read_text("utf-8"))["messages"]))
EOF
}

# A typed line, Ctrl+J, then FILE pasted. Keys with a person's gaps between them (a Ctrl+J in
# the same terminal read as the typed text before it is lost, seen with send-keys bursts); a
# real paste: the terminal wraps the text in bracketed-paste codes (tmux turns its newlines
# into carriage returns, as terminals do). Before multi-line prompts only the first line stayed.
type_line_and_paste() {  # LINE FILE
    t send-keys -t "$SESSION" -l "$1"
    sleep 0.5
    t send-keys -t "$SESSION" C-j
    sleep 0.5
    t load-buffer -b paste "$2"
    t paste-buffer -p -d -b paste -t "$SESSION"
    sleep 1
}

# The function to paste; the message: a typed line, Ctrl+J, then the paste.
printf 'def add(a, b):\n    return a - b\n\nprint(add(1, 2))\n' >"$WORK/add.py"
MESSAGE=$'Fix this function:\ndef add(a, b):\n    return a - b\n\nprint(add(1, 2))'

wait_for '│ ready' "$LOAD_TIMEOUT" "the model loaded (status line: ready)"
type_line_and_paste "Fix this function:" "$WORK/add.py"
captured=$(screen)
echo "--- the prompt after typing a line, Ctrl+J and pasting 4 lines:"
echo "$captured"
check '^.{0,6}Fix this function:' "the typed line is in the prompt"
check '^.{0,6}def add\(a, b\):' "the pasted first line is in the prompt"
check '^.{0,6}    return a - b' "the pasted second line is in the prompt"
check '^.{0,6}print\(add\(1, 2\)\)' "the pasted last line is in the prompt"

t send-keys -t "$SESSION" Enter
wait_for 'vs target alone' "$REPLY_TIMEOUT" "reply finished and compared with the target alone"
sleep 1
captured=$(screen)
echo "--- after the reply:"
echo "$captured"
# A long reply scrolls its top border away: look for text inside the reply's box instead
# (replies are boxed from column 1, the user's messages are indented further).
check '^ │ .*[[:alnum:]]' "a reply is shown"
check '[0-9.]+ tok/s' "the status line shows tok/s"
check '≈[0-9.]+× vs target alone \((measured|auto.s estimate)\)' \
    "the status line compares with the target alone and says where the number comes from"
status_line=$(grep -E 'tok/s' <<<"$captured" | tail -1)
if [[ "$status_line" != *… ]]; then  # a narrow terminal may cut the line before it
    check 'accept [0-9]+%' "the status line shows the acceptance rate"
fi
expected=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$MESSAGE")
if [ "$(sent_messages | head -1)" != "$expected" ]; then
    echo "FAIL: the message sent is not the typed line and the whole pasted function:" >&2
    sent_messages | head -1 >&2
    fail=1
fi

# /attach: Enter puts the file in the prompt (nothing sent yet), Enter again sends it.
t send-keys -t "$SESSION" -l "What does this print?"
sleep 0.5
t send-keys -t "$SESSION" C-j
sleep 0.5
t send-keys -t "$SESSION" -l "/attach add.py"
sleep 0.5
t send-keys -t "$SESSION" Enter
wait_for '^.{0,6}```py' 30 "the attached file in the prompt"
captured=$(screen)
echo "--- the prompt after /attach add.py and Enter:"
echo "$captured"
check '^.{0,6}`add.py`:' "the attached file is named in the prompt"
t send-keys -t "$SESSION" Enter
deadline=$((SECONDS + REPLY_TIMEOUT))
until [ "$(sent_messages | wc -l)" -ge 2 ] || [ $SECONDS -ge $deadline ]; do sleep 1; done
ATTACHED=$'What does this print?\n`add.py`:\n```py\ndef add(a, b):\n    return a - b\n\nprint(add(1, 2))\n```'
expected=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$ATTACHED")
if [ "$(sent_messages | sed -n 2p)" != "$expected" ]; then
    echo "FAIL: the message with the attached file is not what the prompt showed:" >&2
    sent_messages | sed -n 2p >&2
    fail=1
fi

# A module pasted whole, asked back with docstrings: a code edit, the reply copies it.
cat >"$WORK/shapes.py" <<'PY'
import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius ** 2

    def perimeter(self):
        return 2 * math.pi * self.radius


class Rectangle:
    def __init__(self, width, height):
        self.width = width
        self.height = height

    def area(self):
        return self.width * self.height

    def perimeter(self):
        return 2 * (self.width + self.height)


def total_area(shapes):
    return sum(shape.area() for shape in shapes)


def largest(shapes):
    return max(shapes, key=lambda shape: shape.area())
PY
type_line_and_paste "Add a one-line docstring to every method and function, and reply with the whole module:" "$WORK/shapes.py"
t send-keys -t "$SESSION" Enter
deadline=$((SECONDS + REPLY_TIMEOUT))
until [ "$(sent_messages | wc -l)" -ge 3 ] || [ $SECONDS -ge $deadline ]; do sleep 1; done
MODULE="Add a one-line docstring to every method and function, and reply with the whole module:"$'
'"$(cat "$WORK/shapes.py")"
expected=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$MODULE")
if [ "$(sent_messages | sed -n 3p)" != "$expected" ]; then
    echo "FAIL: the pasted module did not arrive whole:" >&2
    sent_messages | sed -n 3p >&2
    fail=1
fi
# The reply is saved with the conversation once it is done.
until [ "$(replies)" -ge 3 ] || [ $SECONDS -ge $deadline ]; do sleep 1; done
sleep 2
captured=$(screen)
echo "--- after the module's reply:"
echo "$captured"
if [ "$POLICY" = auto ]; then
    check 'auto → lookup [0-9]+%' "the status line shows that auto copied the module (auto → lookup N%)"
fi

t send-keys -t "$SESSION" C-c
wait_for 'EXIT=[0-9]+' 60 "the app to quit"
if ! screen | grep -q 'EXIT=0'; then
    screen
    echo "FAIL: svip-local chat did not exit with status 0" >&2
    fail=1
fi
[ $fail -eq 0 ] && echo "OK: svip-local chat works in a ${COLS}x${ROWS} terminal"
exit $fail
