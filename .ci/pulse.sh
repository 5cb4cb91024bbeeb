#!/bin/sh
# Start a PulseAudio daemon with a virtual microphone for the `audio` tests (CI containers run as root
# without a session). Idempotent. Prints the environment to use, so:
#     eval "$(.ci/pulse.sh)"
#     paplay --device=vmic speech.wav &        # plays into the null sink "vmic"
#     reallm listen --device pulse ...         # records vmic.monitor (PULSE_SOURCE)
# Needs: pulseaudio, pulseaudio-utils (pactl, paplay), libportaudio2, libasound2-plugins (ALSA "pulse" device).
set -eu

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/reallm-pulse-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
unset PULSE_SERVER || true

if ! pactl info >/dev/null 2>&1; then
    # -n: no default.pa (it loads hardware/dbus modules that fail in a container); load only what we need.
    # --system=false with root warns but works; --exit-idle-time=-1 keeps it alive between tests.
    pulseaudio -D -n --system=false --exit-idle-time=-1 --disallow-exit \
        --load="module-native-protocol-unix" >/dev/null 2>&1
    i=0
    until pactl info >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 50 ]; then echo "pulse.sh: PulseAudio did not start" >&2; exit 1; fi
        sleep 0.1
    done
fi

if ! pactl list short sinks | grep -q '^[0-9]*[[:space:]]vmic[[:space:]]'; then
    pactl load-module module-null-sink sink_name=vmic rate=16000 channels=1 \
        sink_properties=device.description=reallm-virtual-mic >/dev/null
fi

echo "export XDG_RUNTIME_DIR='$XDG_RUNTIME_DIR'"
echo "export PULSE_SERVER='unix:$XDG_RUNTIME_DIR/pulse/native'"
echo "export PULSE_SOURCE=vmic.monitor"
