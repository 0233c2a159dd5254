# Builds the keyledger binary for docker-compose.yml.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /keyledger ./cmd/keyledger

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /keyledger /keyledger
VOLUME /data
ENTRYPOINT ["/keyledger"]
CMD ["serve"]
