#!/usr/bin/env bash
# The build steps of the Dockerfile's build stage, as a script so they also run on a host (CI
# runs them through tests/test_packaging.py, where no container engine exists):
#   packaging/docker/build.sh OUT
# builds rin-ship and lays out the runtime image's files under OUT (a root file system):
#   OUT/usr/local/bin/rin-ship   the binary
#   OUT/var/lib/rin-ship/        the data folder (a volume; the image's working directory)
#   OUT/etc/rin-ship/            for a config file mounted or copied in
# Environment: FEATURES (cargo features, e.g. redshift,lambda; default none beyond the
# defaults), PROFILE (cargo profile, default release; CI uses dev to reuse its build),
# CARGO_TARGET_DIR (default ./target), RIN_SHIP_COMMIT (the commit, when .git is not there).
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:?usage: packaging/docker/build.sh OUT}
profile=${PROFILE:-release}
features=${FEATURES:-}

args=(build --locked --bin rin-ship --profile "$profile")
[ -n "$features" ] && args+=(--features "$features")
cargo "${args[@]}"

target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in
  dev) bin="$target_dir/debug/rin-ship" ;;
  *) bin="$target_dir/$profile/rin-ship" ;;
esac
[ -x "$bin" ] || { echo "build.sh: $bin was not built" >&2; exit 1; }

rm -rf "$out"
install -D -m 0755 "$bin" "$out/usr/local/bin/rin-ship"
install -d -m 0755 "$out/etc/rin-ship"
install -d -m 0750 "$out/var/lib/rin-ship"
# The binary runs on its own in the runtime stage: a build that cannot even print its
# version must fail here, not in production.
"$out/usr/local/bin/rin-ship" --version
