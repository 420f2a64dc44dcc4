#!/usr/bin/env bash
# End-to-end check of `kestrel app` on a virtual X server: open the window with the fixture
# model, type a message, wait for the reply, and save a screenshot of the screen to
# ${ARTIFACTS:-target/artifacts}/app.png. Fails if the app crashes, the reply never finishes
# or the screenshot is missing. Prints the time from launch to a usable window.
#
# Needs Xvfb, xdotool, xwd (x11-apps) and netpbm (tests/setup-debian.sh installs them).
# KESTREL_BIN picks the binary (default: target/debug/kestrel, built first).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${KESTREL_BIN:-target/debug/kestrel}"
model="${KESTREL_APP_MODEL:-tests/fixtures/llama_gqa}"
artifacts="${ARTIFACTS:-target/artifacts}"
reply_timeout="${REPLY_TIMEOUT:-60}"
window_timeout="${WINDOW_TIMEOUT:-60}"
mkdir -p "$artifacts"
png="$artifacts/app.png"
log="$artifacts/app.log"
rm -f "$png" "$log"

for tool in Xvfb xdotool xwd xwdtopnm pnmtopng; do
    command -v "$tool" >/dev/null || { echo "app_screenshot: $tool is missing (run tests/setup-debian.sh)" >&2; exit 1; }
done
# Without KESTREL_BIN, build (or confirm up to date) the debug binary.
[ -n "${KESTREL_BIN:-}" ] || cargo build -q -p kestrel
[ -x "$bin" ] || { echo "app_screenshot: $bin is not an executable" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"

# A free display number: no lock file and no socket.
display=99
while [ -e "/tmp/.X$display-lock" ] || [ -e "/tmp/.X11-unix/X$display" ]; do
    display=$((display + 1))
done

xvfb_pid=""
app_pid=""
cleanup() {
    [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
    [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

Xvfb ":$display" -screen 0 1024x768x24 -nolisten tcp >"$artifacts/xvfb.log" 2>&1 &
xvfb_pid=$!
export DISPLAY=":$display"
for _ in $(seq 100); do
    xdotool getdisplaygeometry >/dev/null 2>&1 && break
    kill -0 "$xvfb_pid" 2>/dev/null || { echo "app_screenshot: Xvfb did not start:" >&2; cat "$artifacts/xvfb.log" >&2; exit 1; }
    sleep 0.1
done

fail() {
    echo "app_screenshot: $*" >&2
    echo "--- app log ($log) ---" >&2
    cat "$log" >&2 || true
    exit 1
}

since() { awk -v a="$start" -v b="$1" 'BEGIN { printf "%.2f", b - a }'; }

# X11, not Wayland, whatever the session around us uses.
start=$(date +%s.%N)
env -u WAYLAND_DISPLAY -u WINIT_UNIX_BACKEND RUST_BACKTRACE=1 \
    "$bin" app --model "$model" >"$log" 2>&1 &
app_pid=$!

window=$(timeout "$window_timeout" xdotool search --sync --onlyvisible --name '^Kestrel$' 2>/dev/null | head -n1) ||
    fail "no Kestrel window within ${window_timeout} s"
found=$(date +%s.%N)
kill -0 "$app_pid" 2>/dev/null || fail "the app exited"
echo "app_screenshot: window mapped $(since "$found") s after launch"

# Usable: the first frame is drawn and the model has loaded.
for _ in $(seq $((window_timeout * 10))); do
    grep -q '^model ready' "$log" && break
    grep -q '^error' "$log" && fail "the model did not load"
    kill -0 "$app_pid" 2>/dev/null || fail "the app exited"
    sleep 0.1
done
grep -q '^model ready' "$log" || fail "the model did not load within ${window_timeout} s"
grep '^window ready after' "$log" | sed 's/^/app_screenshot: app says: /' || true
ready=$(date +%s.%N)
echo "app_screenshot: model ready $(since "$ready") s after launch"

# No window manager runs, so focus the window directly.
xdotool windowfocus --sync "$window"
sleep 0.5
xdotool type --delay 20 "Hi there"
xdotool key Return

for _ in $(seq $((reply_timeout * 10))); do
    grep -q '^reply done' "$log" && break
    grep -q '^reply failed' "$log" && fail "the reply failed"
    kill -0 "$app_pid" 2>/dev/null || fail "the app exited"
    sleep 0.1
done
grep -q '^reply done' "$log" || fail "no reply within ${reply_timeout} s"
grep '^reply done' "$log" | sed 's/^/app_screenshot: /'
# Let the window draw the finished reply.
sleep 1

xwd -root -silent -display "$DISPLAY" | xwdtopnm 2>/dev/null | pnmtopng >"$png"
[ -s "$png" ] || fail "the screenshot $png is missing or empty"
kill -0 "$app_pid" 2>/dev/null || fail "the app crashed after the reply"
echo "app_screenshot: saved $png ($(stat -c %s "$png") bytes)"
