# Shared by profile.sh and cpu_per_request.sh (source it; it expects $work, a temp directory, and sets up $gw).
# cleanup: stops the proxy's process group ($gw) and the nginx upstream, removes $work.
# start_nginx_upstream PORT: nginx on CPU 1 answering compare.sh's fixed JSON on every path, pid in $work.
gw=""
cleanup() {
  [ -n "$gw" ] && { kill -TERM -- "-$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; }
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_nginx_upstream() {
  cat > "$work/nginx.conf" <<NGINX
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { default_type application/json;
    return 200 '{"servers":[{"id":"srv_1","name":"web-1","status":"running","region":"eu-west"},{"id":"srv_2","name":"db-1","status":"running","region":"eu-west"}]}'; } } }
NGINX
  taskset -c 1 nginx -c "$work/nginx.conf"
}
