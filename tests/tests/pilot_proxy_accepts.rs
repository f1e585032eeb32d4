//! Everything outrigger-pilot generates is accepted by outrigger-proxy: a mesh using every kind
//! and every translated VirtualService and DestinationRule field is generated for a client and a
//! server proxy, and each resource goes through the proxy's own conversion (as over xDS).

use outrigger_pilot::mesh::Loader;
use outrigger_pilot::translate::{ProxyNode, generate};
use outrigger_proxy::xds::store::{ResourceType, Store};

const EXTRA: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm-db}
spec:
  hosts: [db.vm.internal]
  addresses: [240.240.0.5]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1}
spec: {address: 192.168.7.10, labels: {app: db}, ports: {tcp-pg: 15432}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.com]
  addresses: [240.240.0.6]
  resolution: NONE
  ports: [{number: 9443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*", "*/httpbin.example.com", "default/db.vm.internal"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin.example.com
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {connectTimeout: 2s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  http:
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: other.example.com, redirectCode: 302}
  - match: [{uri: {regex: "/v[0-9]+/.*"}, method: {exact: GET}, queryParams: {debug: {exact: "1"}}, withoutHeaders: {x-skip: {}}}]
    rewrite: {uri: /, authority: httpbin.org}
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,reset,503"}
    fault: {delay: {fixedDelay: 10ms, percentage: {value: 1.5}}}
    mirror: {host: httpbin.example.com}
    mirrorPercentage: {value: 25}
    headers: {request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}, response: {remove: [server]}}
    route: [{destination: {host: httpbin.example.com}}]
  - route: [{destination: {host: httpbin.example.com}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/null
    accessLogEncoding: JSON
    enableTracing: false
"#;

fn mesh_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("outrigger-accepts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    for f in std::fs::read_dir(example).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    std::fs::write(dir.join("extra.yaml"), EXTRA).unwrap();
    dir
}

#[test]
fn every_generated_resource_is_accepted() {
    let dir = mesh_dir();
    let (mesh, findings) = Loader::default().load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.level == outrigger_pilot::findings::Level::Error)
        .map(|f| f.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    for (name, ip) in [("client", "10.30.0.10"), ("bill-service-v1", "10.30.0.11")] {
        let node = ProxyNode {
            id: format!("sidecar~{ip}~{name}.default~default.svc.cluster.local"),
            namespace: "default".into(),
            ips: vec![ip.into()],
            labels: Default::default(),
            idle_timeout: None,
            locality: None,
        };
        let x = generate(&mesh, &node);
        let mut store = Store::default();
        for (ty, resources) in [
            (ResourceType::Cluster, &x.clusters),
            (ResourceType::Endpoints, &x.endpoints),
            (ResourceType::Listener, &x.listeners),
            (ResourceType::Route, &x.routes),
        ] {
            let list: Vec<(String, _)> = resources
                .iter()
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect();
            let rejected = store.apply_delta(ty, &list, &[], "1");
            assert!(
                rejected.is_empty(),
                "{name}: {ty:?} rejected: {:?}",
                rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.error))
                    .collect::<Vec<_>>()
            );
        }
        let snap = store.snapshot();
        assert!(
            snap.listeners.contains_key("virtualOutbound")
                && snap.listeners.contains_key("virtualInbound")
        );
        if name == "client" {
            // The Sidecar's egress: the db is visible, the TLS passthrough entry in another scope too.
            assert!(snap.clusters.contains_key("outbound|5432||db.vm.internal"));
            assert!(snap.listeners.contains_key("240.240.0.5_5432"));
            assert!(
                snap.clusters
                    .contains_key("outbound|80||httpbin.example.com")
            );
            let routes = &snap.routes["80"];
            let vh = routes
                .virtual_hosts
                .iter()
                .find(|v| v.name == "httpbin.example.com:80")
                .expect("httpbin vhost");
            assert_eq!(vh.routes.len(), 4);
            assert!(vh.routes[2].fault.is_some(), "fault translated");
            assert!(
                !vh.routes[2].headers.is_empty(),
                "header operations translated"
            );
        }
    }
}
