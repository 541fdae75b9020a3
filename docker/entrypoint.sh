#!/bin/sh
# The genbot image's entry point: `genbot ARGS` (default: `genbot run`). When the config file
# (CONFIG_FILE, default /config/genbot.toml) exists, the commands that read settings get
# `-c CONFIG_FILE`; without it the defaults and GENBOT_* variables apply. genbot replaces this
# shell (exec), so `docker stop` (SIGTERM) and `docker kill -s HUP` (reload) reach it.
set -eu
config="${CONFIG_FILE:-/config/genbot.toml}"
[ "$#" -gt 0 ] || set -- run
case "$1" in
  run | playground | settings | doctor | serve)
    if [ -f "$config" ]; then
      command="$1"
      shift
      set -- "$command" --config "$config" "$@"
    fi
    ;;
esac
exec genbot "$@"
