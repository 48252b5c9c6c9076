# Switchboard's container image: a release build, then the binary alone on
# a distroless base (glibc and libgcc, no shell, no package manager),
# running as the base image's non-root user. The manifests in deploy/
# expect exactly this: uid 65532, port 8080, a read-only root filesystem.
#
#   docker build -t switchboard:0.1.0 .
#
# The test suite does not build it (no container engine here can pull base
# images); tests/deploy.rs checks that it agrees with the manifests.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard \
 && strip target/release/switchboard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
USER 65532:65532
ENV SWITCHBOARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
