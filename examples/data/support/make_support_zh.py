"""Write train_zh.jsonl and test_zh.jsonl for examples/smollm2-support-zh.toml: the Chinese version of the
customer-service task (智能客服 intent routing): messages of an online shop's customers, written in Chinese,
each answered with the code of the team that handles it (the same ten intent codes as make_support.py).
Run ``python make_support_zh.py``; the output is the same on every run (seeded).

As in make_support.py, every fourth phrasing of an intent is used only in the test file, so the held-out score
measures wordings the model never saw in training.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

PHRASINGS: dict[str, list[str]] = {
    "track_order": [
        "我的订单{order}到哪里了？",
        "我{when}买的{product}怎么还没到？",
        "订单{order}现在是什么物流状态？",
        "请问我的包裹发货了吗？",
        "{product}大概什么时候能送到？",
        "订单{order}的物流信息好几天没更新了。",
        "订单{order}今天能派送吗？",
        "快递说{when}到，现在还没收到。",
        "能给我{product}的快递单号吗？",
        "我的{product}还在路上吗？",
        "订单{order}预计哪天送达？",
        "我的快递是不是丢了？",
    ],
    "cancel_order": [
        "请帮我取消订单{order}。",
        "我刚买的{product}不想要了，帮我取消。",
        "订单{order}还没发货，能取消吗？",
        "我改主意了，{product}别发了。",
        "{when}下的单怎么取消？",
        "订单{order}是误下的，请取消。",
        "{product}我不小心拍了两件，取消一件。",
        "现在取消订单{order}还来得及吗？",
        "我想撤销{product}的订单。",
        "订单{order}全部取消，别处更便宜。",
        "订单{order}不用发了，我不需要了。",
        "麻烦把{product}的订单作废。",
    ],
    "refund_request": [
        "订单{order}我要退款。",
        "我退回的{product}什么时候退钱？",
        "订单{order}的钱还没退给我。",
        "{product}{when}就寄回去了，退款呢？",
        "能不能直接退款，不要换货？",
        "退款多久能到我的卡上？",
        "订单{order}退款金额不对。",
        "{when}说好退款的，到现在也没到账。",
        "{product}一直不好用，请给我退款。",
        "订单{order}的钱能退回我的账户吗？",
        "{product}我要全额退款。",
        "订单{order}的退款一直显示处理中。",
    ],
    "return_item": [
        "{product}怎么退货？",
        "订单{order}我想退回去。",
        "{product}已经拆封了还能退吗？",
        "{product}的退货政策是什么？",
        "订单{order}需要一张退货单。",
        "{product}尺码不合适，能换一个吗？",
        "退货要寄到哪里？",
        "{when}买的东西现在还能退吗？",
        "{product}我想换个颜色。",
        "订单{order}能上门取件退货吗？",
        "{product}退货运费要我出吗？",
        "{when}收到的{product}我想换货。",
    ],
    "change_address": [
        "订单{order}的收货地址要改一下。",
        "{product}能改寄到我公司吗？",
        "我{when}搬家了，请更新收货地址。",
        "订单{order}地址写错了，能改吗？",
        "怎么修改包裹的收货地址？",
        "订单{order}请寄到我的新家。",
        "{product}的邮编我填错了。",
        "包裹能改成送到自提点吗？",
        "{product}发货前帮我改一下地址。",
        "订单{order}上的街道名写错了。",
        "{product}能寄到我父母家吗？",
        "订单{order}的地址要加上门牌号。",
    ],
    "payment_issue": [
        "买{product}的时候银行卡支付失败了。",
        "订单{order}被扣了两次钱。",
        "为什么我的付款没成功？",
        "账单上有一笔{when}的扣款我不认识。",
        "可以用支付宝代替银行卡付款吗？",
        "结账的时候一直提示支付错误。",
        "订单{order}钱已经扣了，但显示未付款。",
        "优惠券没用上，{product}付了全价。",
        "订单{order}扣款金额不对。",
        "{product}可以分期付款吗？",
        "银行说订单{order}的付款被拦截了。",
        "{product}有两笔待处理的扣款。",
    ],
    "account_access": [
        "我登录不了我的账号。",
        "忘记密码了，怎么重置？",
        "重置密码的邮件一直收不到。",
        "我的账号输错几次密码被锁了。",
        "怎么修改账号绑定的邮箱？",
        "我怀疑有别人在用我的账号。",
        "验证码一直不对。",
        "从{when}开始我就登录不上了。",
        "我原来的邮箱用不了了，帮我找回账号。",
        "App总是自动退出登录。",
        "怎么注销我的账号？",
        "激活账号的链接我一直没收到。",
    ],
    "product_availability": [
        "{product}还有货吗？",
        "{product}什么时候补货？",
        "{product}有大一号的吗？",
        "{product}到货了能通知我吗？",
        "{product}实体店有卖吗，还是只在网上卖？",
        "{product}有黑色的吗？",
        "{product}近期会补货吗？",
        "{product}还剩几件？",
        "新款{product}可以预订吗？",
        "{product}显示缺货，是真的吗？",
        "我{when}买的{product}你们还在卖吗？",
        "{product}能送到我这个地区吗？",
    ],
    "damaged_item": [
        "我收到的{product}是坏的。",
        "订单{order}的箱子压坏了，里面的东西也坏了。",
        "{when}收到的{product}有裂缝。",
        "{product}少了一个零件。",
        "订单{order}发错货了。",
        "{product}用了两天就坏了。",
        "订单{order}的屏幕有划痕。",
        "{product}一开机就有焦味。",
        "订单{order}的包裹里少了一半东西。",
        "你们寄来的{product}是次品。",
        "{product}到的时候是湿的，还有污渍。",
        "{product}收到时封条已经破了。",
    ],
    "speak_to_agent": [
        "我要找人工客服。",
        "能让真人跟我说话吗？",
        "帮我转客服。",
        "机器人解决不了，给我转人工。",
        "有客服电话吗？",
        "订单{order}的事我要找你们经理。",
        "转给能真正解决问题的人。",
        "客服能给我回个电话吗？",
        "{product}的问题我想跟真人聊。",
        "帮我接通客服代表。",
        "怎么直接联系你们的客服团队？",
        "说来说去没用，让我跟人说。",
    ],
}

PRODUCTS = [
    "跑步鞋",
    "无线耳机",
    "咖啡机",
    "羽绒服",
    "手机壳",
    "瑜伽垫",
    "台灯",
    "双肩包",
    "智能手表",
    "榨汁机",
    "办公椅",
    "蓝牙音箱",
    "电水壶",
    "雨衣",
    "笔记本支架",
    "电动牙刷",
    "桌游",
    "空气炸锅",
]
WHEN = ["上周二", "两周前", "周一", "昨天", "一个多星期前", "月初", "三天前", "上周末", "3号", "十天前"]
OPENINGS = ["", "", "", "你好，", "您好！", "在吗？", "早上好，", "麻烦问一下，", "打扰一下，", "客服你好，"]
CLOSINGS = ["", "", "", "谢谢。", "谢谢！", "麻烦了。", "急！", "请尽快处理。", "辛苦了。"]

TRAIN_PER_INTENT = 48
TEST_PER_INTENT = 12


def fill(phrasing: str, rng: random.Random) -> str:
    order = rng.choice(["#", "", "号"]) + str(rng.randint(10000, 99999))
    if order.startswith("号"):
        order = order[1:] + "号"
    text = phrasing.format(order=order, product=rng.choice(PRODUCTS), when=rng.choice(WHEN))
    text = rng.choice(OPENINGS) + text + rng.choice(CLOSINGS)
    if rng.random() < 0.2:  # typed in a chat box: no final punctuation
        text = text.rstrip("。！？")
    return text


def build(seed: int = 2028) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    spec = importlib.util.spec_from_file_location("make_intents", HERE.parent / "intents" / "make_intents.py")
    assert spec is not None and spec.loader is not None
    intents = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(intents)
    return intents.split_rows(
        PHRASINGS,
        fill,
        random.Random(seed),
        train_per_intent=TRAIN_PER_INTENT,
        test_per_intent=TEST_PER_INTENT,
        row=lambda intent, split, i, text: {
            "id": f"{intent}-zh-{split}-{i}",
            "task": intent,
            "instruction": text,
            "input": "",
            "output": intent,
        },
    )


def main() -> None:
    folder = Path(__file__).resolve().parent
    train, test = build()
    for name, rows in (("train_zh.jsonl", train), ("test_zh.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
