#!/usr/bin/env bash
# buf lint (STANDARD rules, buf.yaml) and buf breaking (FILE rules) over proto/, with the buf
# version pinned in tools/buf/package-lock.json, installed into tools/buf/node_modules.
#
# Breaking changes are checked against, in this order: $BUF_AGAINST_REF if set; on a branch
# off main (or origin/main), its merge-base with main (what the merge would change); else HEAD~1
# (on main, after a merge: the previous main). With no earlier commit (a fresh one-commit or shallow clone),
# the working tree is checked against HEAD, which still catches an uncommitted break.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v npm >/dev/null 2>&1; then
    echo "npm not found: installing Debian's nodejs and npm"
    apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null
fi
npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error >/dev/null
buf=tools/buf/node_modules/.bin/buf
echo "buf $($buf --version)"

echo "== buf lint"
$buf lint

against=${BUF_AGAINST_REF:-}
if [[ -z "$against" ]] && main=$(git rev-parse -q --verify main || git rev-parse -q --verify origin/main); then
    base=$(git merge-base HEAD "$main" || true)
    # On a branch: what merging it would change. On main itself (the base is HEAD): see below.
    [[ -n "$base" && "$base" != "$(git rev-parse HEAD)" ]] && against=$base
fi
if [[ -z "$against" ]] && git rev-parse -q --verify HEAD~1 >/dev/null; then
    against=HEAD~1
fi
if [[ -z "$against" ]]; then
    echo "no earlier commit here: checking the working tree against HEAD"
    against=HEAD
fi

# The earlier contract is unpacked on its own, so it need not have had a buf.yaml yet.
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
echo "== buf breaking against $against ($(git rev-parse --short "$against"))"
if ! git archive "$against" proto 2>/dev/null | tar -x -C "$old"; then
    echo "no proto/ at $against: nothing to compare with"
    exit 0
fi
$buf breaking --against "$old/proto"

# The check must be able to fail: a field renamed in a scratch copy of the contract is reported.
canary=$old/canary
cp -r proto "$canary"
perl -0pi -e 's/(\n\s+string )(\w+)( = 1;)/$1$2_renamed$3/' "$canary/todo/auth/v1/auth.proto"
if $buf breaking "$canary" --against proto >/dev/null; then
    echo "buf breaking did not notice a renamed field: the check is not working" >&2
    exit 1
fi
echo "buf: lint and breaking checks passed"
