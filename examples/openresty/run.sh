#!/bin/sh
# Starts examples/openresty/nginx.conf with Debian's nginx and the Lua module
# unpacked by `make nginx-deps` (both under build/), on 127.0.0.1:$PORT
# (default 8089), in the foreground; Ctrl-C stops it.
#   examples/openresty/run.sh           serve until stopped
#   examples/openresty/run.sh --check   start, run a few requests, stop (make test-nginx)
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
port=${PORT:-8089}
modules=$root/build/nginx-lua/usr/lib/nginx/modules
[ -e "$modules/ngx_http_lua_module.so" ] || { echo "run: make nginx-deps first" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/isle-openresty.XXXXXX")
sed -e "s|@ROOT@|$root|g" -e "s|@MODULES@|$modules|g" -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" \
    -e "s|@RESTY@|$root/build/nginx-lua/usr/share/lua/5.1|g" "$root/examples/openresty/nginx.conf" > "$dir/nginx.conf"
[ "$(id -u)" = 0 ] && sed -i '1a user root;' "$dir/nginx.conf"
export LD_LIBRARY_PATH="$root/build/luajit2/usr/lib/x86_64-linux-gnu"
if [ "$1" != "--check" ]; then
    echo "isle example on http://127.0.0.1:$port/ (fib?n=30, all, slow?s=5, stats); logs in $dir"
    exec /usr/sbin/nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
fi
/usr/sbin/nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" > "$dir/stdout.log" 2>&1 &
pid=$!
trap 'kill -QUIT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
get() { curl -s -m "${2:-10}" "http://127.0.0.1:$port$1" || true; }
i=0
until get /stats 1 | grep -q "fib1"; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "run --check: nginx did not start"; cat "$dir/error.log"; exit 1; }
    sleep 0.1
done
fail() { echo "run --check: $*"; cat "$dir/error.log"; exit 1; }
get "/fib?n=20" | grep -q "fib(20) = 6765" || fail "/fib"
get /all | grep -q "fib(24) + fib(25) = 121393" || fail "/all"
get "/slow?s=30" 0.5 >/dev/null     # the client goes away after 0.5 s
i=0
until get /stats | grep -q "cancelled 1"; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "the abandoned /slow job was not cancelled: $(get /stats)"
    sleep 0.1
done
echo "examples/openresty: /fib, /all and a cancelled /slow work"
