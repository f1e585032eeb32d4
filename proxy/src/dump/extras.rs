//! Descriptors of the messages Istio puts into Envoy configs that no Envoy API crate has.
//!
//! They are declared here by hand (only as much as Outrigger reads) so that proto-JSON holding them
//! decodes. `TypedStruct` is exact; the Istio filter configs are declared with the fields we use,
//! other fields are skipped when decoding JSON.

use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
use prost_reflect::prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

fn field(
    name: &str,
    number: i32,
    ty: Type,
    type_name: Option<&str>,
    repeated: bool,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(if repeated {
            Label::Repeated
        } else {
            Label::Optional
        } as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(String::from),
        json_name: Some(json_name(name)),
        ..Default::default()
    }
}

fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

fn file(
    name: &str,
    package: &str,
    deps: &[&str],
    messages: Vec<DescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        message_type: messages,
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// The extra files, in dependency order.
pub fn files() -> Vec<FileDescriptorProto> {
    vec![
        // udpa/type/v1/typed_struct.proto and xds/type/v3/typed_struct.proto: exact.
        file(
            "outrigger/udpa_typed_struct.proto",
            "udpa.type.v1",
            &["google/protobuf/struct.proto"],
            vec![message(
                "TypedStruct",
                vec![
                    field("type_url", 1, Type::String, None, false),
                    field(
                        "value",
                        2,
                        Type::Message,
                        Some(".google.protobuf.Struct"),
                        false,
                    ),
                ],
            )],
        ),
        // Istio's stats filter (istio/proxy source/extensions/filters/http/istio_stats).
        file(
            "outrigger/istio_stats.proto",
            "stats",
            &["google/protobuf/duration.proto"],
            vec![message(
                "PluginConfig",
                vec![
                    field("disable_host_header_fallback", 6, Type::Bool, None, false),
                    field(
                        "tcp_reporting_duration",
                        7,
                        Type::Message,
                        Some(".google.protobuf.Duration"),
                        false,
                    ),
                ],
            )],
        ),
        // Istio's TCP metadata exchange network filter.
        file(
            "outrigger/istio_metadata_exchange.proto",
            "envoy.tcp.metadataexchange.config",
            &[],
            vec![message(
                "MetadataExchange",
                vec![field("protocol", 1, Type::String, None, false)],
            )],
        ),
        // Istio's ALPN override filter.
        file(
            "outrigger/istio_alpn.proto",
            "istio.envoy.config.filter.http.alpn.v2alpha1",
            &[],
            vec![message("FilterConfig", vec![])],
        ),
        // cncf/xds IP matcher (used by waypoints' listener matchers); opaque to us.
        file(
            "outrigger/xds_ip_matcher.proto",
            "xds.type.matcher.v3",
            &[],
            vec![message("IPMatcher", vec![])],
        ),
    ]
}
