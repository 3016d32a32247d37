# brokerd's container image, from a prebuilt static binary (no base image,
# no shell): the binary, an empty /data owned by the non-root user, and a
# health check that runs the binary itself.
#
#   make image                 # make dist, then podman build (linux/amd64)
#   podman build --format docker --build-arg ARCH=arm64 -t brokerd .
#
# --format docker keeps the HEALTHCHECK (the OCI image format has none).
# Configure with BROKERD_* environment variables (see brokerd --help).
FROM scratch
ARG ARCH=amd64
COPY dist/brokerd-linux-${ARCH} /usr/local/bin/brokerd
COPY --chown=65532:65532 deploy/image/data /data
USER 65532:65532
ENV BROKERD_ADDR=:8080 \
    BROKERD_DATA=/data \
    BROKERD_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/brokerd", "health"]
ENTRYPOINT ["/usr/local/bin/brokerd"]
