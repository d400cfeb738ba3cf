#!/usr/bin/env bash
# Screenshot a report page with headless Chromium, to check that it renders offline.
# Usage: scripts/check_html.sh REPORT_DIR/index.html OUT.png [WIDTHxHEIGHT]
# Exit status: 0 when OUT.png was written, 2 on bad arguments, 3 without chromium.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 INDEX.html OUT.png [WIDTHxHEIGHT]" >&2
    exit 2
fi
page=$1
out=$2
size=${3:-1280x2400}
if [[ ! -f $page ]]; then
    echo "$0: error: no such file: $page" >&2
    exit 2
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z $browser ]]; then
    echo "$0: error: chromium not found on PATH" >&2
    exit 3
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
url="file://$(realpath "$page")"
mkdir -p "$(dirname "$out")"
out_abs="$(realpath "$(dirname "$out")")/$(basename "$out")"
rm -f "$out_abs"
# No network: --disable-background-networking and friends; the page must be self-contained.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --screenshot="$out_abs" \
    --window-size="${size/x/,}" "$url" >/dev/null 2>&1 || true
if [[ ! -s $out_abs ]]; then
    echo "$0: error: chromium wrote no screenshot for $url" >&2
    exit 1
fi
echo "$out_abs"
