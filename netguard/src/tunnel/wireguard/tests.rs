//! The messages as the kernel writes them (layouts from `include/uapi/linux/wireguard.h`,
//! `genetlink.h` and `netlink.h`): this kernel has no WireGuard module to record them from,
//! so they are assembled here field by field, the way `wg show` receives them.

use super::*;

const NLM_F_MULTI: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

fn nested(kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
    attribute(kind | NLA_F_NESTED, &children.concat())
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = AF_INET.to_ne_bytes().to_vec();
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&[0; 8]);
    out
}

fn sockaddr_in6(ip: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut out = AF_INET6.to_ne_bytes().to_vec();
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // flowinfo
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&0u32.to_ne_bytes()); // scope id
    out
}

fn timespec(seconds: i64, nanos: i64) -> Vec<u8> {
    [seconds.to_ne_bytes(), nanos.to_ne_bytes()].concat()
}

fn peer(index: u16, key: u8, endpoint: Option<Vec<u8>>, handshake: i64) -> Vec<u8> {
    let mut attrs = vec![
        attribute(WGPEER_A_PUBLIC_KEY, &[key; 32]),
        attribute(WGPEER_A_LAST_HANDSHAKE_TIME, &timespec(handshake, 5)),
        attribute(7, &1234u64.to_ne_bytes()), // WGPEER_A_RX_BYTES, ignored
    ];
    if let Some(endpoint) = endpoint {
        attrs.push(attribute(WGPEER_A_ENDPOINT, &endpoint));
    }
    nested(index, &attrs)
}

fn answer(kind: u16, flags: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
    message(kind, flags, 2, WG_CMD_GET_DEVICE, 1, &attrs.concat())
}

fn done() -> Vec<u8> {
    let mut out = 20u32.to_ne_bytes().to_vec();
    out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    out.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&0i32.to_ne_bytes());
    out
}

fn error(code: i32) -> Vec<u8> {
    let mut out = 36u32.to_ne_bytes().to_vec();
    out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&code.to_ne_bytes());
    out.extend_from_slice(&[0; 16]); // the request's header
    out
}

#[test]
fn requests_are_laid_out_as_the_kernel_reads_them() {
    let family = family_request(WG_GENL_NAME, 7);
    assert_eq!(
        family.len(),
        16 + 4 + 4 + 12,
        "header, genl header, 'wireguard\\0' padded"
    );
    assert_eq!(u32::from_ne_bytes(family[..4].try_into().unwrap()), 36);
    assert_eq!(u16::from_ne_bytes([family[4], family[5]]), GENL_ID_CTRL);
    assert_eq!(
        u16::from_ne_bytes([family[6], family[7]]),
        NLM_F_REQUEST | NLM_F_ACK
    );
    assert_eq!(u32::from_ne_bytes(family[8..12].try_into().unwrap()), 7);
    assert_eq!(family[16], CTRL_CMD_GETFAMILY);
    assert_eq!(&family[24..34], b"wireguard\0");

    let device = device_request(0x1a, 8, 42);
    assert_eq!(u16::from_ne_bytes([device[4], device[5]]), 0x1a);
    assert_eq!(
        u16::from_ne_bytes([device[6], device[7]]),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP
    );
    assert_eq!(device[16..18], [WG_CMD_GET_DEVICE, WG_GENL_VERSION]);
    assert_eq!(
        attributes(&device[20..]).unwrap(),
        [(WGDEVICE_A_IFINDEX, &42u32.to_ne_bytes()[..])]
    );
}

#[test]
fn the_family_id_is_read_and_a_missing_family_is_none() {
    let found = message(
        GENL_ID_CTRL,
        0,
        1,
        1,
        2,
        &[
            attribute(CTRL_ATTR_FAMILY_NAME, b"wireguard\0"),
            attribute(CTRL_ATTR_FAMILY_ID, &0x1bu16.to_ne_bytes()),
        ]
        .concat(),
    );
    assert_eq!(
        family_id(&[[found, error(0)].concat()]).unwrap(),
        Some(0x1b)
    );
    assert_eq!(family_id(&[error(-libc::ENOENT)]).unwrap(), None);
    assert!(family_id(&[error(-libc::EPERM)]).is_err());
}

#[test]
fn a_device_split_over_messages_yields_every_peer_and_endpoint() {
    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let first = answer(
        0x1b,
        NLM_F_MULTI,
        &[
            attribute(WGDEVICE_A_IFINDEX, &42u32.to_ne_bytes()),
            attribute(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
            attribute(WGDEVICE_A_FWMARK, &0xca6cu32.to_ne_bytes()),
            nested(
                WGDEVICE_A_PEERS,
                &[
                    peer(
                        0,
                        1,
                        Some(sockaddr_in([198, 51, 100, 9], 51820)),
                        1_700_000_000,
                    ),
                    peer(1, 2, None, 0),
                ],
            ),
        ],
    );
    // The next message repeats the device's identity and carries the remaining peers.
    let second = answer(
        0x1b,
        NLM_F_MULTI,
        &[
            attribute(WGDEVICE_A_IFINDEX, &42u32.to_ne_bytes()),
            nested(
                WGDEVICE_A_PEERS,
                &[peer(0, 3, Some(sockaddr_in6(v6, 1637)), 1_700_000_100)],
            ),
        ],
    );
    let device = parse_device(&[first, [second, done()].concat()])
        .unwrap()
        .unwrap();
    assert_eq!((device.listen_port, device.fwmark), (51820, 0xca6c));
    assert_eq!(device.peers.len(), 3);
    assert_eq!(
        device.endpoints().collect::<Vec<_>>(),
        [
            "198.51.100.9:51820".parse::<SocketAddr>().unwrap(),
            SocketAddr::new(v6.into(), 1637),
        ]
    );
    assert_eq!(device.peers[1].last_handshake, None, "never");
    assert_eq!(
        device.peers[0].last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
    );
    assert_eq!(device.peers[2].public_key, [3; 32]);
    assert_eq!(
        device.latest_handshake(),
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_100, 5)),
        "the newest of any peer"
    );
}

#[test]
fn truncated_or_lying_lengths_are_errors_not_panics() {
    let good = answer(
        0x1b,
        0,
        &[attribute(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes())],
    );
    for cut in 1..good.len() {
        let _ = parse_device(&[good[..cut].to_vec()]);
    }
    let mut lying = good.clone();
    lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(parse_device(&[lying]).is_err());
    let mut short_attr = good;
    short_attr[20..22].copy_from_slice(&2u16.to_ne_bytes());
    assert!(parse_device(&[short_attr]).is_err());
}

#[test]
fn the_running_kernel_answers_a_family_request_through_the_exchange() {
    // The controller's own family is always there: the exchange and the parser agree with a
    // real kernel.
    let answer = sys::netlink_exchange(libc::NETLINK_GENERIC, &family_request("nlctrl", 1));
    assert_eq!(family_id(&answer.unwrap()).unwrap(), Some(GENL_ID_CTRL));
    let answer = sys::netlink_exchange(libc::NETLINK_GENERIC, &family_request("ngt-nofamily", 2));
    assert_eq!(family_id(&answer.unwrap()).unwrap(), None);
}
