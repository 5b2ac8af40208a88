#!/usr/bin/env bash
# Drive `svip-local chat` in a real terminal: tmux at 80x24 by default, keys sent with
# send-keys, the screen read with capture-pane. Checks that the app loads, that a reply
# appears, that the status line shows tok/s, acceptance and the comparison with the target
# alone, and that Ctrl+C quits with exit status 0. Prints the captured screen.
#
#   scripts/tmux_chat_check.sh                                 # the real pair (pulled if needed)
#   scripts/tmux_chat_check.sh --target T.gguf --draft D.gguf  # any files
#
# Environment: COLS, ROWS (terminal size), PROMPT (the message), POLICY (default svip),
# MAX_TOKENS (default 64), LOAD_TIMEOUT and REPLY_TIMEOUT (seconds), SVIP_LOCAL (the command).
set -euo pipefail

COLS=${COLS:-80}
ROWS=${ROWS:-24}
PROMPT=${PROMPT:-"Write a Python function that reverses a string."}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}
REPLY_TIMEOUT=${REPLY_TIMEOUT:-300}
SVIP_LOCAL=${SVIP_LOCAL:-svip-local}
if [ $# -eq 0 ]; then
    set -- qwen2.5-coder-1.5b --yes
fi
# svip explicitly: on a CPU without calibration `auto` is the target alone (nothing to show).
ARGS=("$@" --policy "${POLICY:-svip}" --max-tokens "${MAX_TOKENS:-64}")

SESSION="svip-chat-check-$$"
t() { tmux -L "$SESSION" "$@"; }  # a private tmux server: other sessions stay untouched
t new-session -d -s "$SESSION" -x "$COLS" -y "$ROWS" \
    "$(printf '%q ' "$SVIP_LOCAL" chat "${ARGS[@]}"); echo \"EXIT=\$?\"; sleep 600"
trap 't kill-server 2>/dev/null || true' EXIT

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

wait_for '│ ready' "$LOAD_TIMEOUT" "the model loaded (status line: ready)"
t send-keys -t "$SESSION" -l "$PROMPT"
t send-keys -t "$SESSION" Enter
wait_for 'vs target alone' "$REPLY_TIMEOUT" "reply finished and target alone timed"
sleep 1
captured=$(screen)
echo "$captured"

fail=0
check() {  # check REGEX WHAT
    if ! grep -Eq -- "$1" <<<"$captured"; then
        echo "FAIL: $2" >&2
        fail=1
    fi
}
# A long reply scrolls its top border away: look for text inside the reply's box instead
# (replies are boxed from column 1, the user's messages are indented further).
check '^ │ .*[[:alnum:]]' "a reply is shown"
check '[0-9.]+ tok/s' "the status line shows tok/s"
check 'accept [0-9]+%' "the status line shows the acceptance rate"
check '[0-9.]+× vs target alone' "the status line compares with the target alone"

t send-keys -t "$SESSION" C-c
wait_for 'EXIT=[0-9]+' 60 "the app to quit"
if ! screen | grep -q 'EXIT=0'; then
    screen
    echo "FAIL: svip-local chat did not exit with status 0" >&2
    fail=1
fi
[ $fail -eq 0 ] && echo "OK: svip-local chat works in a ${COLS}x${ROWS} terminal"
exit $fail
