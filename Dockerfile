# rin-ship as a container image: built in the Rust image, run from a distroless one (glibc,
# CA certificates, no shell) as a non-root user.
#
#   docker build -t rin-ship --build-arg RIN_SHIP_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker build -t rin-ship:redshift --build-arg FEATURES=redshift,lambda .
#   docker run -p 24224:24224 -p 9880:9880 -p 2021:2021 -v rin-data:/var/lib/rin-ship rin-ship
#
# The first build compiles every dependency (the AWS SDKs are most of it): about 17 minutes on
# 2 cores. .dockerignore leaves target/ and .git out of the context, hence RIN_SHIP_COMMIT.
# The build steps are packaging/docker/build.sh, which CI also runs on the host.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cargo features besides the defaults (s3, sqs): redshift, lambda.
ARG FEATURES=""
ARG RIN_SHIP_COMMIT=""
RUN FEATURES="$FEATURES" RIN_SHIP_COMMIT="$RIN_SHIP_COMMIT" packaging/docker/build.sh /rootfs

# Debian 12, as the build stage: the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /rootfs/usr/local/bin/rin-ship /usr/local/bin/rin-ship
COPY --from=build --chown=65532:65532 /rootfs/var/lib/rin-ship /var/lib/rin-ship
# The distroless `nonroot` user (65532); Kubernetes may run it as another (runAsUser).
USER 65532:65532
# Without a config file, serve keeps everything under ./rin-data: the volume.
WORKDIR /var/lib/rin-ship
VOLUME ["/var/lib/rin-ship"]
# The embedded defaults, on every interface of the container (a config file's own binds win).
ENV RIN_SHIP_FORWARD_BIND=0.0.0.0:24224 \
    RIN_SHIP_HTTP_BIND=0.0.0.0:9880 \
    RIN_SHIP_METRICS_BIND=0.0.0.0:2021 \
    RIN_SHIP_LOG_FORMAT=json
# forward (TCP, and UDP heartbeats), HTTP intake, metrics (/metrics, /healthz, /readyz).
EXPOSE 24224/tcp 24224/udp 9880/tcp 2021/tcp
# `rin-ship health` GETs /healthz at RIN_SHIP_METRICS_BIND (no curl in the image). With a
# config file whose metrics.bind is elsewhere, set RIN_SHIP_METRICS_BIND to the same address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/rin-ship", "health"]
ENTRYPOINT ["/usr/local/bin/rin-ship"]
CMD ["serve"]
