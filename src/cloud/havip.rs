//! High-availability virtual IPs (HaVips) as the VPC API (2016-04-28) changes them:
//! CreateHaVip, DeleteHaVip, AssociateHaVip, UnassociateHaVip (DescribeHaVips reads the state).
//!
//! The rules and error codes are the VPC API reference's pages of these actions (and of their
//! deprecated ECS 2014-05-26 twins, which list the same codes):
//! - CreateHaVip: the address must lie in the vSwitch's CIDR block
//!   (`InvalidIPAddress.OutOfRange`), must not be one the vSwitch reserves
//!   (`InvalidIPAddress.NotAvailable`) nor one another resource holds
//!   (`InvalidIPAddress.AlreadyUsed`), and must be an address (`InvalidIPAddress.Malformed`);
//!   without `IpAddress` a free address of the vSwitch is taken; an unknown vSwitch is
//!   `InvalidVSwitch.NotFound`; a description of the wrong length or starting with
//!   `http(s)://` is `InvalidDescription.Malformed`.
//! - AssociateHaVip: the HaVip must be Available or InUse (`IncorrectHaVipStatus`), the ECS
//!   instance Running or Stopped (`IncorrectInstanceStatus`), in the HaVip's vSwitch; up to 10
//!   ECS instances or 10 ENIs (`CountLimitExceeded.HaVipOnECSInstance`), never both kinds.
//! - UnassociateHaVip: the instance must be associated (`ResourceNotAssociated`); the holder
//!   (master) is released only with `Force` (`Forbidden.UnassociateMaster`).
//! - DeleteHaVip: not while an EIP is bound to it (`DependencyViolation.HaVipAssociatedWithEIP`)
//!   nor unless it is Available (`IncorrectStatus`), so not while it has instances.
//!
//! eiplab's choices where the pages name no code: `QuotaExceeded.HaVip` for the account's 50
//! HaVips (the quota is the EIP documentation's "up to 50 HaVips by default"; the name follows
//! the cloud's `QuotaExceeded.<resource>` codes), `InvalidVSwitchId.IpNotEnough` (ECS's code for
//! a full vSwitch) when no address is free, `InvalidVSwitchId.NotSame` for an instance in
//! another vSwitch, `InvalidInstanceType.NotSame` for mixing ECS instances and ENIs,
//! `InvalidInstanceId.AlreadyAssociated` for an instance associated already. The holder that
//! may be released without `Force` is a sole instance: with no standby left, nothing fails over.
//!
//! Every call checks everything before it changes anything, so a refused call leaves the state
//! as it was. The cloud's HaVips pass through Creating / Associating / Unassociating; the lab's
//! reach their end state as the call returns.
//!
//! Who holds a HaVip (SPEC D12): the first associated instance, until a guest of another
//! associated instance configures the HaVip's address ([`Cloud::claim_havip`], which the lab
//! calls when it sees the address appear: keepalived adds it on becoming master) or the lab's
//! failover call moves it ([`Cloud::fail_over_havip`]). The holder's ENI carries the HaVip's
//! address as one more private IP in the dataplane, and an EIP on the HaVip maps to it.

use super::{
    in_cidr, not_found_instance, usable_in, Change, Cloud, CloudError, HaVip, InstanceStatus,
};
use core::net::Ipv4Addr;

/// HaVips per account (the EIP documentation: "up to 50 HaVips by default").
pub const HAVIP_QUOTA: usize = 50;
/// Instances (or ENIs) one HaVip can be associated with (AssociateHaVip).
pub const MAX_HAVIP_INSTANCES: usize = 10;

/// CreateHaVip's parameters as the call gave them, unparsed. `None`: not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaVipSpec {
    /// `VSwitchId`.
    pub vswitch: String,
    /// `IpAddress`.
    pub ip_address: Option<String>,
    /// `Name`.
    pub name: Option<String>,
    /// `Description`.
    pub description: Option<String>,
}

/// What an associated instance id names: `EcsInstance` or `NetworkInterface`.
fn kind_word(c: &Cloud, id: &str) -> &'static str {
    if c.enis.contains_key(id) && !c.instances.contains_key(id) {
        "NetworkInterface"
    } else {
        "EcsInstance"
    }
}

fn not_found_havip(id: &str) -> CloudError {
    CloudError::new(
        "InvalidHaVipId.NotFound",
        404,
        format!("no HaVip {id} in this region: check the HaVipId (DescribeHaVips)"),
    )
}

/// A name or description: `min..=max` characters, not starting with `http://` or `https://`.
fn check_text(
    field: &str,
    s: &str,
    (min, max): (usize, usize),
    code: &'static str,
) -> Result<(), CloudError> {
    let n = s.chars().count();
    let lower = s.to_ascii_lowercase();
    if n < min || n > max {
        return Err(CloudError::bad(
            code,
            format!("{field} must be {min} to {max} characters long"),
        ));
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(CloudError::bad(
            code,
            format!("{field} must not start with http:// or https://"),
        ));
    }
    Ok(())
}

impl Cloud {
    /// The HaVip `id` of `region`.
    pub fn havip_in(&self, region: &str, id: &str) -> Result<&HaVip, CloudError> {
        self.havips
            .get(id)
            .filter(|h| h.region == region)
            .ok_or_else(|| not_found_havip(id))
    }

    /// Whether an associated instance id is an ENI's (`NetworkInterface`) or an instance's.
    pub fn havip_instance_type(&self, h: &HaVip) -> &'static str {
        h.associated_instances
            .first()
            .map_or("EcsInstance", |id| kind_word(self, id))
    }

    /// CreateHaVip: the new HaVip is Available. Returns its id.
    pub fn create_havip(
        &mut self,
        now: u64,
        region: &str,
        spec: &HaVipSpec,
    ) -> Result<(String, Vec<Change>), CloudError> {
        let mut h = self.havip_to_create(region, spec)?;
        h.id = self.next_havip_id();
        h.created = now;
        let id = h.id.clone();
        self.havips.insert(id.clone(), h);
        Ok((id.clone(), self.havip_changed(id)))
    }

    /// Every rule of CreateHaVip, changing nothing.
    pub fn check_create_havip(&self, region: &str, spec: &HaVipSpec) -> Result<(), CloudError> {
        self.havip_to_create(region, spec).map(drop)
    }

    fn havip_to_create(&self, region: &str, spec: &HaVipSpec) -> Result<HaVip, CloudError> {
        let v = self
            .vswitches
            .get(&spec.vswitch)
            .filter(|v| v.region == region)
            .ok_or_else(|| {
                CloudError::bad(
                    "InvalidVSwitch.NotFound",
                    format!("no vSwitch {} in region {region}", spec.vswitch),
                )
            })?;
        if let Some(d) = &spec.description {
            check_text("Description", d, (2, 256), "InvalidDescription.Malformed")?;
        }
        if let Some(n) = &spec.name {
            check_text("Name", n, (1, 128), "InvalidName.Malformed")?;
        }
        if self.havips.len() >= HAVIP_QUOTA {
            return Err(CloudError::bad(
                "QuotaExceeded.HaVip",
                format!(
                    "the account has {} HaVips, its quota: delete one first",
                    HAVIP_QUOTA
                ),
            ));
        }
        let ip = match &spec.ip_address {
            Some(s) => {
                let ip: Ipv4Addr = s.parse().map_err(|_| {
                    CloudError::bad(
                        "InvalidIPAddress.Malformed",
                        format!("IpAddress {s:?} is not an IPv4 address"),
                    )
                })?;
                if !in_cidr(ip, v.network, v.prefix_len) {
                    return Err(CloudError::bad(
                        "InvalidIPAddress.OutOfRange",
                        format!(
                            "{ip} is outside vSwitch {} ({}/{})",
                            v.id, v.network, v.prefix_len
                        ),
                    ));
                }
                if !usable_in(v, ip) {
                    return Err(CloudError::bad(
                        "InvalidIPAddress.NotAvailable",
                        format!(
                            "{ip} is reserved by vSwitch {} (its first address, its gateway and \
                             its last three)",
                            v.id
                        ),
                    ));
                }
                if self.ip_used(ip) {
                    return Err(CloudError::bad(
                        "InvalidIPAddress.AlreadyUsed",
                        format!("{ip} is held by an ENI, a HaVip or a NAT gateway already"),
                    ));
                }
                ip
            }
            None => self.free_ip_of(&v.id).ok_or_else(|| {
                CloudError::bad(
                    "InvalidVSwitchId.IpNotEnough",
                    format!("vSwitch {} has no free address left", v.id),
                )
            })?,
        };
        Ok(HaVip {
            id: String::new(),
            region: region.to_string(),
            vswitch: v.id.clone(),
            ip,
            status: "Available".into(),
            associated_instances: Vec::new(),
            name: spec.name.clone().unwrap_or_default(),
            description: spec.description.clone().unwrap_or_default(),
            created: 0,
        })
    }

    /// A new HaVip id (the serial that numbers the API's SNAT/DNAT entries numbers them too).
    fn next_havip_id(&mut self) -> String {
        loop {
            self.next_entry_serial += 1;
            let n = self
                .next_entry_serial
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(23);
            let id = format!("havip-{n:016x}");
            if !self.havips.contains_key(&id) {
                return id;
            }
        }
    }

    fn havip_changed(&mut self, havip_id: String) -> Vec<Change> {
        let c = Change::HaVip { havip_id };
        self.record(c.clone());
        vec![c]
    }

    /// AssociateHaVip: `instance_type` `EcsInstance` (default) or `NetworkInterface`. The first
    /// instance associated holds the HaVip (its master); the HaVip is InUse.
    pub fn associate_havip(
        &mut self,
        region: &str,
        havip_id: &str,
        instance_id: &str,
        instance_type: Option<&str>,
    ) -> Result<Vec<Change>, CloudError> {
        self.check_associate_havip(region, havip_id, instance_id, instance_type)?;
        let h = self.havips.get_mut(havip_id).expect("checked");
        h.associated_instances.push(instance_id.to_string());
        h.status = "InUse".into();
        Ok(self.havip_changed(havip_id.to_string()))
    }

    /// Every rule of AssociateHaVip, changing nothing.
    pub fn check_associate_havip(
        &self,
        region: &str,
        havip_id: &str,
        instance_id: &str,
        instance_type: Option<&str>,
    ) -> Result<(), CloudError> {
        let h = self.havip_in(region, havip_id)?;
        let eni = match instance_type.unwrap_or("EcsInstance") {
            "EcsInstance" => false,
            "NetworkInterface" => true,
            t => {
                return Err(CloudError::bad(
                    "InvalidInstanceType.ValueNotSupported",
                    format!("InstanceType {t:?}: EcsInstance or NetworkInterface"),
                ))
            }
        };
        if h.status != "Available" && h.status != "InUse" {
            return Err(CloudError::bad(
                "IncorrectHaVipStatus",
                format!("{havip_id} is {}: it must be Available or InUse", h.status),
            ));
        }
        // The vSwitch of the instance (its primary ENI's) or of the ENI, and the instance whose
        // status counts.
        let (vswitch, instance) = if eni {
            let e = self
                .enis
                .get(instance_id)
                .filter(|e| e.region == region)
                .ok_or_else(|| not_found_instance(instance_id))?;
            (e.vswitch.clone(), e.instance.clone())
        } else {
            let i = self
                .instances
                .get(instance_id)
                .filter(|i| i.region == region)
                .ok_or_else(|| not_found_instance(instance_id))?;
            let v = self
                .enis
                .values()
                .find(|e| e.primary && e.instance.as_deref() == Some(i.id.as_str()))
                .map(|e| e.vswitch.clone())
                .unwrap_or_default();
            (v, Some(i.id.clone()))
        };
        if let Some(i) = instance.and_then(|i| self.instances.get(&i)) {
            if !matches!(i.status, InstanceStatus::Running | InstanceStatus::Stopped) {
                return Err(CloudError::bad(
                    "IncorrectInstanceStatus",
                    format!("{} is {:?}: it must be Running or Stopped", i.id, i.status),
                ));
            }
        }
        if vswitch != h.vswitch {
            return Err(CloudError::bad(
                "InvalidVSwitchId.NotSame",
                format!(
                    "{instance_id} is in vSwitch {vswitch}, HaVip {havip_id} in {}: they must \
                     share the vSwitch",
                    h.vswitch
                ),
            ));
        }
        if h.associated_instances.iter().any(|a| a == instance_id) {
            return Err(CloudError::bad(
                "InvalidInstanceId.AlreadyAssociated",
                format!("{instance_id} is associated with {havip_id} already"),
            ));
        }
        let want = if eni {
            "NetworkInterface"
        } else {
            "EcsInstance"
        };
        if !h.associated_instances.is_empty() && self.havip_instance_type(h) != want {
            return Err(CloudError::bad(
                "InvalidInstanceType.NotSame",
                format!(
                    "{havip_id} is associated with {}s: a HaVip takes ECS instances or ENIs, \
                     not both",
                    self.havip_instance_type(h)
                ),
            ));
        }
        if h.associated_instances.len() >= MAX_HAVIP_INSTANCES {
            return Err(CloudError::bad(
                "CountLimitExceeded.HaVipOnECSInstance",
                format!("{havip_id} has {MAX_HAVIP_INSTANCES} instances, the most it takes"),
            ));
        }
        Ok(())
    }

    /// UnassociateHaVip: removes one instance; releasing the holder while others remain needs
    /// `force`, and the next one holds it. With none left the HaVip is Available.
    pub fn unassociate_havip(
        &mut self,
        region: &str,
        havip_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<Vec<Change>, CloudError> {
        self.check_unassociate_havip(region, havip_id, instance_id, force)?;
        let h = self.havips.get_mut(havip_id).expect("checked");
        h.associated_instances.retain(|a| a != instance_id);
        if h.associated_instances.is_empty() {
            h.status = "Available".into();
        }
        Ok(self.havip_changed(havip_id.to_string()))
    }

    /// Every rule of UnassociateHaVip, changing nothing.
    pub fn check_unassociate_havip(
        &self,
        region: &str,
        havip_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        let h = self.havip_in(region, havip_id)?;
        if h.status != "Available" && h.status != "InUse" {
            return Err(CloudError::bad(
                "IncorrectHaVipStatus",
                format!("{havip_id} is {}: it must be Available or InUse", h.status),
            ));
        }
        let Some(k) = h.associated_instances.iter().position(|a| a == instance_id) else {
            return Err(CloudError::bad(
                "ResourceNotAssociated",
                format!("{instance_id} is not associated with {havip_id}"),
            ));
        };
        if let Some(i) = self.instances.get(instance_id) {
            if !matches!(i.status, InstanceStatus::Running | InstanceStatus::Stopped) {
                return Err(CloudError::bad(
                    "IncorrectInstanceStatus",
                    format!("{} is {:?}: it must be Running or Stopped", i.id, i.status),
                ));
            }
        }
        if k == 0 && h.associated_instances.len() > 1 && !force {
            return Err(CloudError::bad(
                "Forbidden.UnassociateMaster",
                format!(
                    "{instance_id} holds {havip_id} (its master): set Force=true to release it"
                ),
            ));
        }
        Ok(())
    }

    /// The ENI that carries a HaVip's traffic: its holder's. An ECS instance holds it on its
    /// ENI in the HaVip's vSwitch (the primary one first); an associated ENI holds it itself.
    /// `None` while nobody holds it or the holder's ENI is detached.
    pub fn havip_eni(&self, h: &HaVip) -> Option<&super::Eni> {
        let holder = h.associated_instances.first()?;
        if let Some(e) = self
            .enis
            .get(holder)
            .filter(|_| !self.instances.contains_key(holder))
        {
            return e.instance.as_ref().map(|_| e);
        }
        self.enis
            .values()
            .filter(|e| e.instance.as_deref() == Some(holder.as_str()) && e.vswitch == h.vswitch)
            .min_by_key(|e| (!e.primary, e.index))
    }

    /// The instance a HaVip's holder entry stands for (itself, or the instance its ENI is on).
    fn havip_member_instance<'a>(&'a self, entry: &'a str) -> Option<&'a str> {
        if self.instances.contains_key(entry) {
            return Some(entry);
        }
        self.enis.get(entry).and_then(|e| e.instance.as_deref())
    }

    /// A guest of `instance` configured `ip` on one of its interfaces: every HaVip with that
    /// address that the instance (or one of its ENIs) is associated with moves to it, as the
    /// cloud moves a HaVip to the instance that announces its address (keepalived does on
    /// becoming master). Addresses of no such HaVip change nothing.
    pub fn claim_havip(&mut self, instance: &str, ip: Ipv4Addr) -> Vec<Change> {
        let mut moves = Vec::new();
        for h in self.havips.values() {
            if h.ip != ip {
                continue;
            }
            let k = h
                .associated_instances
                .iter()
                .position(|a| self.havip_member_instance(a) == Some(instance));
            if let Some(k) = k.filter(|&k| k > 0) {
                moves.push((h.id.clone(), k));
            }
        }
        let mut changes = Vec::new();
        for (id, k) in moves {
            let h = self.havips.get_mut(&id).expect("found above");
            let entry = h.associated_instances.remove(k);
            h.associated_instances.insert(0, entry);
            changes.extend(self.havip_changed(id));
        }
        changes
    }

    /// The lab's explicit failover: `to` (an instance or ENI associated with the HaVip) holds
    /// it from now on. Nothing changes when it holds it already.
    pub fn fail_over_havip(&mut self, havip_id: &str, to: &str) -> Result<Vec<Change>, CloudError> {
        let h = self
            .havips
            .get(havip_id)
            .ok_or_else(|| not_found_havip(havip_id))?;
        let Some(k) = h.associated_instances.iter().position(|a| a == to) else {
            return Err(CloudError::bad(
                "ResourceNotAssociated",
                format!(
                    "{to} is not associated with {havip_id}: it holds nothing until \
                     AssociateHaVip adds it (associated: {})",
                    if h.associated_instances.is_empty() {
                        "none".to_string()
                    } else {
                        h.associated_instances.join(", ")
                    }
                ),
            ));
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let h = self.havips.get_mut(havip_id).expect("found above");
        let entry = h.associated_instances.remove(k);
        h.associated_instances.insert(0, entry);
        Ok(self.havip_changed(havip_id.to_string()))
    }

    /// DeleteHaVip: only an Available HaVip (no instances) without an EIP.
    pub fn delete_havip(
        &mut self,
        region: &str,
        havip_id: &str,
    ) -> Result<Vec<Change>, CloudError> {
        self.check_delete_havip(region, havip_id)?;
        self.havips.remove(havip_id);
        Ok(self.havip_changed(havip_id.to_string()))
    }

    /// Every rule of DeleteHaVip, changing nothing.
    pub fn check_delete_havip(&self, region: &str, havip_id: &str) -> Result<(), CloudError> {
        let h = self.havip_in(region, havip_id)?;
        if let Some(e) = self
            .eips
            .values()
            .find(|e| e.binding.as_ref().is_some_and(|b| b.instance_id == h.id))
        {
            return Err(CloudError::bad(
                "DependencyViolation.HaVipAssociatedWithEIP",
                format!(
                    "EIP {} is bound to {havip_id}: unassociate it first",
                    e.allocation_id
                ),
            ));
        }
        if h.status != "Available" || !h.associated_instances.is_empty() {
            return Err(CloudError::bad(
                "IncorrectStatus",
                format!(
                    "{havip_id} is {} with {} instance(s): only an Available HaVip can be \
                     deleted (unassociate its instances first)",
                    h.status,
                    h.associated_instances.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::fixture::{eni, web};
    use crate::cloud::{Associate, BindType, Eni, Mode, VSwitch};

    const R: &str = "cn-shanghai";

    /// fixture::web (vsw-a, i-web on 10.0.1.10) plus vsw-b; i-a, i-b (Running), i-stop
    /// (Stopped), i-pend (Pending) on vsw-a, i-far on vsw-b; detached eni-x (10.0.1.30) on
    /// vsw-a. Transitions take no time. The record is empty.
    fn lab() -> Cloud {
        let mut c = web(0, 0);
        c.add_vswitch(VSwitch {
            id: "vsw-b".into(),
            region: R.into(),
            zone: "cn-shanghai-b".into(),
            network: "10.0.2.0".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.2.253".parse().unwrap(),
        });
        for (k, (id, status)) in [
            ("i-a", InstanceStatus::Running),
            ("i-b", InstanceStatus::Running),
            ("i-stop", InstanceStatus::Stopped),
            ("i-pend", InstanceStatus::Pending),
            ("i-far", InstanceStatus::Running),
        ]
        .into_iter()
        .enumerate()
        {
            add(
                &mut c,
                id,
                status,
                &format!("10.0.{}.{}", 1 + (id == "i-far") as u8, 11 + k),
            );
        }
        c.enis.get_mut("eni-i-far0").unwrap().vswitch = "vsw-b".into();
        c.add_eni(eni("eni-x", "10.0.1.30", false, None));
        c.take_changes();
        c
    }

    fn add(c: &mut Cloud, id: &str, status: InstanceStatus, addr: &str) {
        c.add_instance(crate::cloud::fixture::instance(id, status));
        let e: Eni = eni(&format!("eni-{id}0"), addr, true, Some(id));
        c.add_eni(e);
    }

    fn spec(ip: Option<&str>) -> HaVipSpec {
        HaVipSpec {
            vswitch: "vsw-a".into(),
            ip_address: ip.map(Into::into),
            ..HaVipSpec::default()
        }
    }

    /// Runs `f` on a copy of `c`: it must fail with `code` (and `status`), change nothing and
    /// record nothing.
    fn refused(
        c: &Cloud,
        code: &str,
        status: u16,
        f: impl FnOnce(&mut Cloud) -> Result<Vec<Change>, CloudError>,
    ) {
        let mut d = c.clone();
        d.take_changes();
        let e = f(&mut d).expect_err(code);
        assert_eq!((e.code, e.status), (code, status), "{}", e.message);
        assert_eq!(&d, c, "{code}: a refused call changed the state");
        assert!(
            d.take_changes().is_empty(),
            "{code}: a refused call recorded a change"
        );
    }

    fn create(c: &mut Cloud, ip: Option<&str>) -> String {
        let (id, ch) = c.create_havip(7, R, &spec(ip)).unwrap();
        assert_eq!(
            ch,
            vec![Change::HaVip {
                havip_id: id.clone()
            }]
        );
        id
    }

    #[test]
    fn create_takes_a_free_address_of_the_vswitch_and_is_available() {
        let mut c = lab();
        let a = create(&mut c, None);
        let b = create(&mut c, Some("10.0.1.50"));
        assert_eq!(c.havips[&a].ip, "10.0.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.havips[&b].ip, "10.0.1.50".parse::<Ipv4Addr>().unwrap());
        assert!(a.starts_with("havip-") && a != b);
        let h = &c.havips[&b];
        assert_eq!(
            (h.status.as_str(), h.vswitch.as_str(), h.created),
            ("Available", "vsw-a", 7)
        );
        assert!(h.associated_instances.is_empty());
        // The next automatic address skips the HaVips'.
        let n = create(&mut c, None);
        assert_eq!(c.havips[&n].ip, "10.0.1.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn create_refuses_an_address_outside_reserved_taken_or_malformed() {
        let mut c = lab();
        create(&mut c, Some("10.0.1.50"));
        let cr = |ip: &'static str| {
            move |c: &mut Cloud| c.create_havip(0, R, &spec(Some(ip))).map(|r| r.1)
        };
        refused(&c, "InvalidIPAddress.OutOfRange", 400, cr("10.0.2.50"));
        refused(&c, "InvalidIPAddress.NotAvailable", 400, cr("10.0.1.0"));
        refused(&c, "InvalidIPAddress.NotAvailable", 400, cr("10.0.1.253"));
        refused(&c, "InvalidIPAddress.NotAvailable", 400, cr("10.0.1.255"));
        refused(&c, "InvalidIPAddress.AlreadyUsed", 400, cr("10.0.1.10"));
        refused(&c, "InvalidIPAddress.AlreadyUsed", 400, cr("10.0.1.50"));
        refused(&c, "InvalidIPAddress.Malformed", 400, cr("10.0.1"));
        refused(&c, "InvalidVSwitch.NotFound", 400, |c| {
            let s = HaVipSpec {
                vswitch: "vsw-none".into(),
                ..spec(None)
            };
            c.create_havip(0, R, &s).map(|r| r.1)
        });
        refused(&c, "InvalidVSwitch.NotFound", 400, |c| {
            c.create_havip(0, "cn-beijing", &spec(None)).map(|r| r.1)
        });
        refused(&c, "InvalidDescription.Malformed", 400, |c| {
            let s = HaVipSpec {
                description: Some("https://x.example".into()),
                ..spec(None)
            };
            c.create_havip(0, R, &s).map(|r| r.1)
        });
    }

    #[test]
    fn the_account_takes_50_havips() {
        let mut c = lab();
        for _ in 0..HAVIP_QUOTA {
            create(&mut c, None);
        }
        assert_eq!(c.havips.len(), 50);
        refused(&c, "QuotaExceeded.HaVip", 400, |c| {
            c.create_havip(0, R, &spec(None)).map(|r| r.1)
        });
        let one = c.havips.keys().next().unwrap().clone();
        c.delete_havip(R, &one).unwrap();
        create(&mut c, None);
    }

    #[test]
    fn associate_makes_it_in_use_and_the_first_instance_holds_it() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.take_changes();
        let ch = c.associate_havip(R, &h, "i-a", None).unwrap();
        assert_eq!(
            ch,
            vec![Change::HaVip {
                havip_id: h.clone()
            }]
        );
        assert_eq!(c.take_changes(), ch);
        c.associate_havip(R, &h, "i-stop", Some("EcsInstance"))
            .unwrap();
        let v = &c.havips[&h];
        assert_eq!(v.status, "InUse");
        assert_eq!(v.associated_instances, ["i-a", "i-stop"]);
        assert_eq!(c.havip_instance_type(v), "EcsInstance");
    }

    #[test]
    fn associate_refuses_what_the_docs_refuse() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.associate_havip(R, &h, "i-a", None).unwrap();
        let a = |inst: &'static str, t: Option<&'static str>| {
            let h = h.clone();
            move |c: &mut Cloud| c.associate_havip(R, &h, inst, t)
        };
        refused(&c, "InvalidHaVipId.NotFound", 404, |c| {
            c.associate_havip(R, "havip-none", "i-b", None)
        });
        refused(&c, "InvalidHaVipId.NotFound", 404, {
            let h = h.clone();
            move |c: &mut Cloud| c.associate_havip("cn-beijing", &h, "i-b", None)
        });
        refused(&c, "InvalidInstanceId.NotFound", 400, a("i-none", None));
        refused(&c, "InvalidInstanceId.NotFound", 400, a("eni-x", None));
        refused(
            &c,
            "InvalidInstanceId.NotFound",
            400,
            a("i-b", Some("NetworkInterface")),
        );
        refused(
            &c,
            "InvalidInstanceType.ValueNotSupported",
            400,
            a("i-b", Some("Nat")),
        );
        refused(&c, "IncorrectInstanceStatus", 400, a("i-pend", None));
        refused(&c, "InvalidVSwitchId.NotSame", 400, a("i-far", None));
        refused(
            &c,
            "InvalidInstanceId.AlreadyAssociated",
            400,
            a("i-a", None),
        );
        refused(
            &c,
            "InvalidInstanceType.NotSame",
            400,
            a("eni-x", Some("NetworkInterface")),
        );
        // A HaVip in another state takes no instance.
        let mut d = c.clone();
        d.havips.get_mut(&h).unwrap().status = "Creating".into();
        refused(&d, "IncorrectHaVipStatus", 400, a("i-b", None));
    }

    #[test]
    fn a_havip_takes_ten_instances_or_ten_enis() {
        let mut c = lab();
        let h = create(&mut c, None);
        for k in 0..MAX_HAVIP_INSTANCES {
            let id = format!("i-n{k}");
            add(
                &mut c,
                &id,
                InstanceStatus::Running,
                &format!("10.0.1.{}", 100 + k),
            );
            c.associate_havip(R, &h, &id, None).unwrap();
        }
        refused(&c, "CountLimitExceeded.HaVipOnECSInstance", 400, |c| {
            c.associate_havip(R, &h, "i-b", None)
        });
        // ENIs: a detached one on the vSwitch is taken.
        let g = create(&mut c, None);
        c.associate_havip(R, &g, "eni-x", Some("NetworkInterface"))
            .unwrap();
        assert_eq!(c.havip_instance_type(&c.havips[&g]), "NetworkInterface");
        refused(&c, "InvalidInstanceType.NotSame", 400, |c| {
            c.associate_havip(R, &g, "i-b", None)
        });
    }

    #[test]
    fn unassociate_releases_the_holder_only_with_force() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.associate_havip(R, &h, "i-a", None).unwrap();
        c.associate_havip(R, &h, "i-b", None).unwrap();
        refused(&c, "Forbidden.UnassociateMaster", 400, |c| {
            c.unassociate_havip(R, &h, "i-a", false)
        });
        refused(&c, "ResourceNotAssociated", 400, |c| {
            c.unassociate_havip(R, &h, "i-stop", true)
        });
        refused(&c, "InvalidHaVipId.NotFound", 404, |c| {
            c.unassociate_havip(R, "havip-none", "i-a", true)
        });
        let ch = c.unassociate_havip(R, &h, "i-a", true).unwrap();
        assert_eq!(
            ch,
            vec![Change::HaVip {
                havip_id: h.clone()
            }]
        );
        let v = &c.havips[&h];
        assert_eq!(
            (v.status.as_str(), v.associated_instances.as_slice()),
            ("InUse", &["i-b".to_string()][..])
        );
        // The sole holder goes without Force (no standby is left to fail over to).
        c.unassociate_havip(R, &h, "i-b", false).unwrap();
        let v = &c.havips[&h];
        assert_eq!(v.status, "Available");
        assert!(v.associated_instances.is_empty());
    }

    #[test]
    fn unassociate_of_a_standby_needs_no_force() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.associate_havip(R, &h, "i-a", None).unwrap();
        c.associate_havip(R, &h, "i-b", None).unwrap();
        c.unassociate_havip(R, &h, "i-b", false).unwrap();
        assert_eq!(c.havips[&h].associated_instances, ["i-a"]);
    }

    #[test]
    fn delete_is_refused_while_it_has_instances_or_an_eip() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.associate_havip(R, &h, "i-a", None).unwrap();
        refused(&c, "IncorrectStatus", 400, |c| c.delete_havip(R, &h));
        c.unassociate_havip(R, &h, "i-a", false).unwrap();
        c.associate(
            0,
            &Associate {
                allocation_id: "eip-web".into(),
                instance_id: h.clone(),
                bind_type: BindType::HaVip,
                mode: Mode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
        c.take_changes();
        refused(&c, "DependencyViolation.HaVipAssociatedWithEIP", 400, |c| {
            c.delete_havip(R, &h)
        });
        refused(&c, "InvalidHaVipId.NotFound", 404, |c| {
            c.delete_havip(R, "havip-none")
        });
    }

    #[test]
    fn delete_removes_it_and_frees_its_address() {
        let mut c = lab();
        let h = create(&mut c, Some("10.0.1.60"));
        let ch = c.delete_havip(R, &h).unwrap();
        assert_eq!(
            ch,
            vec![Change::HaVip {
                havip_id: h.clone()
            }]
        );
        assert!(!c.havips.contains_key(&h));
        create(&mut c, Some("10.0.1.60"));
    }

    #[test]
    fn a_saved_havip_keeps_its_instances_and_an_old_one_loads() {
        let mut c = lab();
        let h = create(&mut c, None);
        c.associate_havip(R, &h, "i-a", None).unwrap();
        let v = &c.havips[&h];
        let back: HaVip = serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap();
        assert_eq!(&back, v);
        let old = r#"{"id":"havip-a","region":"cn-shanghai","vswitch":"vsw-a","ip":"10.0.1.9","status":"Available"}"#;
        let h: HaVip = serde_json::from_str(old).unwrap();
        assert!(h.associated_instances.is_empty() && h.name.is_empty());
    }

    /// i-a and i-b on a HaVip at 10.0.1.100 (i-a holds it), an EIP on the HaVip. Returns the
    /// HaVip id and the EIP's address.
    fn held(c: &mut Cloud) -> (String, Ipv4Addr) {
        let id = create(c, Some("10.0.1.100"));
        c.associate_havip(R, &id, "i-a", None).unwrap();
        c.associate_havip(R, &id, "i-b", None).unwrap();
        let (eip, _) = c.allocate(0, R, 5, None, 3).unwrap();
        c.associate(
            0,
            &Associate {
                allocation_id: eip.clone(),
                instance_id: id.clone(),
                bind_type: BindType::HaVip,
                mode: Mode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
        c.handle_timeout(u64::MAX / 2);
        c.take_changes();
        let address = c.eips[&eip].address;
        (id, address)
    }

    /// Where the dataplane sends `eip`: the ENI's id and the private IP it is translated to;
    /// and whether that ENI carries the HaVip's address.
    fn reaches(c: &Cloud, eip: Ipv4Addr) -> Option<(String, Ipv4Addr, bool)> {
        let (enis, eips) = c.dataplane();
        let a = eips.iter().find(|e| e.address == eip)?.association?;
        let eni = c.enis.values().find(|e| e.index == a.eni)?;
        let ip = a.private_ip?;
        let carries = enis
            .iter()
            .find(|e| e.id == a.eni)
            .is_some_and(|e| e.private_ips.contains(&ip));
        Some((eni.id.clone(), ip, carries))
    }

    #[test]
    fn an_eip_on_a_havip_reaches_its_holder_on_the_havip_address() {
        let mut c = lab();
        let (_, eip) = held(&mut c);
        let ip: Ipv4Addr = "10.0.1.100".parse().unwrap();
        assert_eq!(reaches(&c, eip), Some(("eni-i-a0".into(), ip, true)));
        // Only the holder carries the address, and the table accepts it.
        let (enis, _) = c.dataplane();
        let b = c.enis["eni-i-b0"].index;
        assert!(!enis
            .iter()
            .find(|e| e.id == b)
            .unwrap()
            .private_ips
            .contains(&ip));
        let t = c.table().build().expect("a table with a HaVip");
        assert_eq!(t.nat_eip_of(ip), Some(eip));
    }

    #[test]
    fn a_guest_claiming_the_address_moves_the_havip_and_its_eip() {
        let mut c = lab();
        let (id, eip) = held(&mut c);
        let ip: Ipv4Addr = "10.0.1.100".parse().unwrap();
        // Another address, or an instance not associated: nothing.
        assert!(c
            .claim_havip("i-b", "10.0.1.101".parse().unwrap())
            .is_empty());
        assert!(c.claim_havip("i-web", ip).is_empty());
        // The holder claiming again: nothing.
        assert!(c.claim_havip("i-a", ip).is_empty());
        assert!(c.take_changes().is_empty());
        let ch = c.claim_havip("i-b", ip);
        assert_eq!(
            ch,
            vec![Change::HaVip {
                havip_id: id.clone()
            }]
        );
        assert_eq!(c.take_changes(), ch);
        assert_eq!(c.havips[&id].associated_instances, ["i-b", "i-a"]);
        assert_eq!(reaches(&c, eip), Some(("eni-i-b0".into(), ip, true)));
        let (enis, _) = c.dataplane();
        let a = c.enis["eni-i-a0"].index;
        assert!(!enis
            .iter()
            .find(|e| e.id == a)
            .unwrap()
            .private_ips
            .contains(&ip));
        // And back by the lab's failover call.
        assert_eq!(
            c.fail_over_havip(&id, "i-a").unwrap(),
            vec![Change::HaVip {
                havip_id: id.clone()
            }]
        );
        assert_eq!(reaches(&c, eip), Some(("eni-i-a0".into(), ip, true)));
        assert!(c.fail_over_havip(&id, "i-a").unwrap().is_empty());
    }

    #[test]
    fn failover_refuses_an_instance_not_associated_or_an_unknown_havip() {
        let mut c = lab();
        let (id, _) = held(&mut c);
        refused(&c, "ResourceNotAssociated", 400, |c| {
            c.fail_over_havip(&id, "i-web")
        });
        refused(&c, "InvalidHaVipId.NotFound", 404, |c| {
            c.fail_over_havip("havip-none", "i-a")
        });
    }

    #[test]
    fn a_havip_on_an_eni_is_held_by_that_eni_while_attached() {
        let mut c = lab();
        let id = create(&mut c, Some("10.0.1.100"));
        c.associate_havip(R, &id, "eni-x", Some("NetworkInterface"))
            .unwrap();
        // eni-x is detached: nobody carries the address.
        assert!(c.havip_eni(&c.havips[&id]).is_none());
        c.enis.get_mut("eni-x").unwrap().instance = Some("i-b".into());
        assert_eq!(
            c.havip_eni(&c.havips[&id]).map(|e| e.id.as_str()),
            Some("eni-x")
        );
        // A guest of the instance the ENI is on claims it like its own.
        let id2 = create(&mut c, Some("10.0.1.101"));
        c.associate_havip(R, &id2, "eni-i-a0", Some("NetworkInterface"))
            .unwrap();
        c.associate_havip(R, &id2, "eni-x", Some("NetworkInterface"))
            .unwrap();
        assert_eq!(c.claim_havip("i-b", "10.0.1.101".parse().unwrap()).len(), 1);
        assert_eq!(c.havips[&id2].associated_instances, ["eni-x", "eni-i-a0"]);
    }
}
