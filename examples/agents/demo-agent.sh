#!/bin/sh
# A demo agent for warpd's exec runner: reads the work's payload JSON on stdin, works for a
# moment, prints what it did and exits 0 (done) or non-zero (failed, retried with backoff).
# A payload containing "fail": true always fails; other work fails about one time in five.
payload=$(cat)
echo "agent ${WARP_AGENT}: work ${WARP_WORK_ID} (${WARP_WORK_KIND}) lease ${WARP_LEASE_ID} token ${WARP_FENCING_TOKEN} payload ${payload}"
# Two independent random numbers from the kernel: how long to work, and whether to fail.
r=$(od -An -N4 -tu2 /dev/urandom)
set -- $r
sleep "$(($1 % 3 + 1))"
case "$payload" in
  *'"fail":true'* | *'"fail": true'*)
    echo "agent ${WARP_AGENT}: this work always fails" >&2
    exit 2 ;;
esac
if [ $(($2 % 5)) -eq 0 ]; then
  echo "agent ${WARP_AGENT}: transient failure, please retry" >&2
  exit 1
fi
echo "agent ${WARP_AGENT}: done"
