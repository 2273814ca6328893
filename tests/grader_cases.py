"""Labelled math-grading cases transcribed from public graders' test suites: the data behind the
agreement figure in tests/test_grader_agreement.py. Cases are data only, no code is taken.

Each block is keyed by its source (repository, file, test) and holds (prediction, reference,
verdict) as that suite asserts it. `prediction` is what the model's final answer block holds
("answer" blocks: graded as `<answer>prediction</answer>`) or a whole completion ("completion"
blocks: graded as written). Where a suite checks both argument orders, both are listed.

Math-Verify's own suite: every parametrised case whose test uses its default extraction (LaTeX,
or LaTeX and expressions), the default precision (6 digits) and set-relation comparison on, as
this grader does; cases over 600 characters are left out.
"""

from __future__ import annotations

Case = tuple[str, str, bool]
"""(prediction, reference, the source's verdict)."""

ANSWER_BLOCKS: dict[str, list[Case]] = {
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_simple_fraction_notation
    'huggingface/Math-Verify tests/test_all.py::test_simple_fraction_notation': [
        ('\\frac{10}{9}', '10/9', True),
        ('-\\frac{10}{9}', '-10/9', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_sets_handling
    'huggingface/Math-Verify tests/test_all.py::test_sets_handling': [
        ('$[0,1)$', '$[0,1)$', True),
        ('$[0,1)$', '$[0,9)$', False),
        ('$[0,9)$', '$(0,9)$', False),
        ('$-[0,1)$', '$1$', False),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_latex_notation
    'huggingface/Math-Verify tests/test_all.py::test_latex_notation': [
        ('Answer \\[ 9 \\]', '$9$', True),
        ('Answer $ 9 $', '$9$', True),
        ('Answer $$ 9 $$', '$9$', True),
        ('Answer \\( 9 \\)', '$9$', True),
        ('Answer \\( (9+1) \\)', '$10$', True),
        ('Answer $ \n 9 \n $', '$9$', False),
        ('Answer \\( \n 9 \n \\)', '$9$', False),
        ('Answer \\[ \n 9 \n \\]', '$9$', True),
        ('Answer $$ \n 9 \n $$', '$9$', True),
        ('Answer $ \\frac{1}{2} \\$ = \\frac{10}{9} $', '$10/9$', True),
        ('$\\frac13 $', '$1/3$', True),
        ('$\\frac3{3} $', '$1$', True),
        ('$\\sqrt3 $', '$\\sqrt{3}$', True),
        ('$\\cfrac{1}{3} $', '$1/3$', True),
        ('$\\dfrac{1}{3} $', '$1/3$', True),
        ('$\\tfrac{1}{3} $', '$1/3$', True),
        ('$ 1/3 $', '$1/3$', True),
        ('$\\left( \\frac{1}{3} \\right)$', '$1/3$', True),
        ('$\\boxed{\\frac{1}{3}}$', '$1/3$', True),
        ('$\\frac{1}{3} \\text{meters}$', '$1/3$', True),
        ('$\\frac{1}{3} \\textbf{meters}$', '$1/3$', True),
        ('$k = \\frac{1}{3}$', '$1/3$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_percent_notation
    'huggingface/Math-Verify tests/test_all.py::test_percent_notation': [
        ('28 percent', '$28\\%$', True),
        ('28 pct', '$28\\%$', True),
        ('28 %', '$28\\%$', True),
        ('$28$ %', '$28\\%$', True),
        ('$28$ percent', '$28\\%$', True),
        ('$\\boxed{28}$ pct', '$28\\%$', True),
        ('$\\boxed{28 pct}', '$28\\%$', True),
        ('$\\boxed{28 percent}', '$28\\%$', True),
        ('$\\boxed{28 percentage}', '$28\\%$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_latex_notation_math
    'huggingface/Math-Verify tests/test_all.py::test_latex_notation_math': [
        ('Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\\boxed{2-2p}$.', '$2-2p$', True),
        ('\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}', '\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}', True),
        ('We have that \\begin{align*} \\sqrt{30 } + \\sqrt{50 }&=\\sqrt{30 } + \\sqrt{25 \\cdot2 } \\ &=\\sqrt{30 } + 5 \\sqrt{2 } \\ &\\approx5.477 + 5 \\cdot1.414 \\ &\\approx5.477 + 7.07 \\ &\\approx12.547. \\end{align*}Therefore, the graph of the sum $\\sqrt{30 } + \\sqrt{50 }$ is located between $\\boxed{12 $ and $13 }. $ Final Answer: The final answer is \\"$12 $ and $13 $\\". I hope it is correct.', "Since $25<30<36$, we have $5<\\sqrt{30}<6$. We also know that $7^2=49$, so $\\sqrt{50}\\approx7$. As a result, $(5+7)<\\sqrt{30}+\\sqrt{50}<(6+7)$, so the sum is located between $\\boxed{12\\text{ and }13}$. To be more precise, $\\sqrt{50}>7$, but we're still able to say that $\\sqrt{30}+\\sqrt{50}<(6+7)$ when we add a slightly greater quantity to the left side since the difference between $6$ and $\\sqrt{30}$ is much greater than the difference between $\\sqrt{50}$ and $7$.", True),
        ('We have that $r = \\\\sqrt{0^2 + 3^2} = 3.$  Also, if we draw the line connecting the origin and $(0,3),$ this line makes an angle of $\\\\frac{\\\\pi}{2}$ with the positive $x$-axis.\\n\\n[asy]\\nunitsize(0.8 cm);\\n\\ndraw((-0.5,0)--(3.5,0));\\ndraw((0,-0.5)--(0,3.5));\\ndraw(arc((0,0),3,0,90),red,Arrow(6));\\n\\ndot((0,3), red);\\nlabel(\\"$(0,3)$\\", (0,3), W);\\ndot((3,0), red);\\n[/asy]\\n\\nTherefore, the polar coordinates are $\\\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}.$', '$(3, \\frac{\\pi}{2})$', True),
        ('$f(-2)+f(-1)+f(0)=\\frac{3(-2)-2}{-2-2}+\\frac{3(-1)-2}{-1-2}+\\frac{3(0)-2}{0-2}=\\frac{-8}{-4}+\\frac{-5}{-3}+\\frac{-2}{-2}=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$', '$\\frac{14}{3}$', True),
        ("Evelyn covered more distance in less time than Briana, Debra and Angela, so her average speed is greater than any of their average speeds. Evelyn went almost as far as Carla in less than half the time that it took Carla, so Evelyn's average speed is also greater than Carla's. Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", '$\\text{Evelyn}$', True),
        ('We use the distance formula:  \\begin{align*} \\sqrt{(2 - (-4))^2 + ((-6) - 3)^2} &= \\sqrt{6^2 + (-9)^2}\\\\ & = \\sqrt{36 + 81}\\\\ & = \\sqrt{117} = \\boxed{3\\sqrt{13}}. \\end{align*}', '$3\\sqrt{13}$', True),
        ('We also know that $q(-1) = ((-1)^2 - 1)p(-1) + 1 = 1.$  Setting $x = -1$ in the equation above, we get \\[q(-1) = 20160(-a + b),\\]so $-a + b = \\frac{1}{20160}.$  Solving for $a$ and $b,$ we find $a = -\\frac{29}{40320}$ and $b = -\\frac{3}{4480}.$  Hence, \\begin{align*} q(x) &= \\left( -\\frac{29}{40320} x - \\frac{3}{4480} \\right) (x - 2)(x - 3) \\dotsm (x - 7) \\\\ &= -\\frac{(29x + 27)(x - 2)(x - 3) \\dotsm (x - 7)}{40320}. \\end{align*}In particular, \\[q(8) = -\\frac{(29 \\cdot 8 + 27)(6)(5) \\dotsm (1)}{40320} = -\\frac{37}{8},\\]so \\[p(8) = \\frac{q(8) + 8}{8^2 - 1} = \\boxed{\\frac{3}{56}}.\\]', '$\\frac{3}{56}$', True),
        ('Of the two-digit perfect squares, only $4^2=16$ and $6^2=36$ end in $6$. Thus, there are $\\boxed{2}$ distinct possible values for $B$.', '$2$', True),
        ('The shaded triangle has a base of length $10\\text{ cm}.$ Since the triangle is enclosed in a rectangle of height $3\\text{ cm},$ then the height of the triangle is $3\\text{ cm}.$ (We know that the enclosing shape is a rectangle, because any figure with four sides, including two pairs of equal opposite sides, and two right angles must be a rectangle.) Therefore, the area of the triangle is $$\\frac{1}{2}\\times 3 \\times 10 = \\boxed{15\\mbox{ cm}^2}.$$', '$15\\mbox{ cm}^2$', True),
        ('By the Integer Root Theorem, the possible integer roots are all the divisors of 14 (including negative divisors), which are $-14,$ $-7,$ $-2,$ $-1,$ $1,$ $2,$ $7,$ and $14.$  Checking, we find that the only integer roots are $\\boxed{-2,1}.$', '$-2,1$', True),
        ('We use the property that $a \\equiv b \\pmod{m}$ implies $a^c \\equiv b^c \\pmod{m}$. Since $129 \\equiv -3 \\pmod{11}$ and $96 \\equiv -3 \\pmod{11}$, we have  $$129^{34}+96^{38} \\equiv (-3)^{34}+(-3)^{38} \\equiv 3^{34}+3^{38} \\pmod{11}.$$ Since $3^5 \\equiv 1 \\pmod{11},$ we can see that $3^{34} = (3^5)^{6} \\cdot 3^4$ and $3^{38} = (3^5)^{7} \\cdot 3^3.$ Then, $129^{34}+96^{38} \\equiv \\boxed{9} \\pmod{11}.$', '$9$', True),
        ('Therefore, \\begin{align*} \\angle BAC &= \\angle BAD + \\angle DAC \\\\ &= 50^\\circ+40^\\circ \\\\ &= \\boxed{90^\\circ}. \\end{align*}', '$90^\\circ$', True),
        ('Note that $p(x)$ has degree at most 2.  Also, $p(a) = p(b) = p(c) = 1.$  Thus, the polynomials $p(x)$ and 1 agree at three different values, so by the Identity Theorem, they are the same polynomial.  Hence, the degree of $p(x)$ (which is the constant polynomial 1) is $\\boxed{0}.$', '$0$', True),
        ('We may carry out long division in base 5 just as in base 10. We have  \\[ \\begin{array}{c|ccc} \\multicolumn{2}{r}{2} & 0 & 4 \\\\ \\cline{2-4} 2 & 4 & 1 & 3 \\\\ \\multicolumn{2}{r}{4} & \\downarrow & \\\\ \\cline{2-2} \\multicolumn{2}{r}{0} & 1 & \\\\ \\multicolumn{2}{r}{} & 0 & \\downarrow \\\\ \\cline{3-3} \\multicolumn{2}{r}{} & 1 & 3 \\\\ \\multicolumn{2}{r}{} & 1 & 3 \\\\ \\cline{3-4} \\multicolumn{2}{r}{} & & 0 \\end{array} \\]for a quotient of $\\boxed{204_5}$. Note that in the above calculation we have used that $13_5$ divided by $2_5$ is $4_5$, which follows from $4_5\\times2_5=8_{10}=13_5$.', '$204_5$', True),
        ('Let $\\alpha$ be a root of $x^3 - 3x^2 + 4x - 1 = 0,$ so $\\alpha^3 = 3 \\alpha^2 - 4 \\alpha + 1.$ Then solving the system of equations, we find $(p,q,r) = \\boxed{(6,31,-1)}.$', '$(6,31,-1)$', True),
        ('This simplifies to $64y + 1920 = 0,$ so $y = -30.$ Then $x^2 - 2x - 48 = -30,$ or $x^2 - 2x - 18 = 0.$ By the quadratic formula, $x = \\boxed{1 \\pm \\sqrt{19}}.$', '$1 \\pm \\sqrt{19}$', True),
        ('This gives us $x^2 + 1 = 6x,$ or $x^2 - 6x + 1 = 0.$ By the quadratic formula, the roots are $x = \\boxed{3 \\pm 2 \\sqrt{2}}.$', '$3 \\pm 2 \\sqrt{2}$', True),
        ('The roots of $P(x)$ are $-2$ and $1 \\pm \\sqrt{5}$, so the answer is $\\boxed{\\{1\\pm\\sqrt{5},-2\\}}.$', '$\\{1\\pm\\sqrt{5},-2\\}$', True),
        ('By sum-to-product,\n\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]', '$2 \\sin b \\cos a$', True),
        ('The distance is $\\boxed{125\\textnormal{ miles}}.$', '$125$ miles', True),
        ('The solution set is $\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0) \\cup (0, 1) \\cup (1, \\infty)}.$', '$[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0) \\cup (0, 1) \\cup (1, \\infty)$', True),
        ('The answer is $\\boxed{\\sqrt 2+\\sqrt 5}$', '$\\sqrt{2}+\\sqrt{5}$', True),
        ('Therefore $\\boxed{\\frac94\\pi}$.', '$\\frac{9}{4}\\pi$', True),
        ('x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$', 'x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_relations_math
    'huggingface/Math-Verify tests/test_all.py::test_relations_math': [
        ('Therefore $x \\geq 5$ is the solution.', '$x >= 5$', True),
        ('We find that $x \\lt 3$.', '$x < 3$', True),
        ('Thus $x <= 2$ is our answer.', '$x \\leq 2$', True),
        ('Therefore $x \\gt 5$ is the solution.', '$x > 5$', True),
        ('We find that $x \\neq 3$.', '$x != 3$', True),
        ('Therefore $x < 5$ is the solution.', '$x > 5$', False),
        ('The solution is $x \\leq 5$', '$x \\geq 5$', False),
        ('The solution is $x != 5$', '$x \\neq 5$', True),
        ('$5 \\geq x$', '$x \\leq 5$', True),
        ('$5 \\leq x$', '$x \\geq 5$', True),
        ('$x = 5+5+1 = 7 =11$', '$x = 11$', True),
        ('$11a+c$', '$7 = 11a+c$', False),
        ('$x = 5+5+1 = 1/3 \\approx 11$', '$x = 1/3$', True),
        ('$x=11$', '$11$', True),
        ('$x\\approx11$', '$11$', True),
        ('$x=1/3\\approx1.3$', '$1/3$', True),
        ('$-x > -1$', '$x < 1$', True),
        ('$x > -1$', '$x < 1$', False),
        ('$-x >= -1$', '$x <= 1$', True),
        ('$0$', '$a +3z = 0$', False),
        ('$0$', '$1 = \\zzz = x = 0$', True),
        ('$1$', '$2x + z = 1$', False),
        ('$0$', '$a^2 + b = 0$', False),
        ('$1$', '$k=1$', True),
        ('$k=1$', '$1$', True),
        ('$z = 3+3 = 2$', '$z = 1 + 1 = 2$', True),
        ('$y=-\\frac{1}{2}x+\\frac{3}{4}$', '$2x+4y-3=0$', True),
        ('$x^2/16 + y^2/12 = 1/4$', '$x^2/4 + y^2/3 = 1$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_matrix_extraction
    'huggingface/Math-Verify tests/test_all.py::test_matrix_extraction': [
        ('The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.', '$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', True),
        ('Here is a zero matrix: $ \\begin{pmatrix}0 & 0 \\\\0 & 0\\end{pmatrix} $', '$\\begin{bmatrix}0 & 0 \\\\0 & 0\\end{bmatrix}$', True),
        ('Special matrix: $ \\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right] $', '$\\begin{pmatrix}1 & 2 \\\\3 & 4\\end{pmatrix}$', True),
        ('Matrix with fractions: $ \\begin{pmatrix}\\frac{1}{2} & \\frac{3}{4} \\\\ \\frac{5}{6} & \\frac{7}{8}\\end{pmatrix} $', '$\\begin{pmatrix}\\frac{1}{2} & \\frac{3}{4} \\\\ \\frac{5}{6} & \\frac{7}{8}\\end{pmatrix}$', True),
        ('The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$', '$\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}$', True),
        ('When multiplying by identity: $\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', '$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', True),
        ('The matrix is $\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}$', '$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$', False),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_complex_math_expressions
    'huggingface/Math-Verify tests/test_all.py::test_complex_math_expressions': [
        ('$0.0833333333333333$', '$\\frac{1}{12}$', True),
        ('$(1,4.5)$', '$(1,\\frac{9}{2})$', True),
        ('$\\frac{x}{7}+\\frac{2}{7}$', '$\\frac{x+2}{7}$', True),
        ('$\\sec^2(y)$', '$\\tan^2(y)+1$', True),
        ('$\\begin{pmatrix}-\\\x0crac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix}$', '$\\begin{pmatrix}-\\\x0crac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix}$', True),
        ('$\\begin{pmatrix}\\frac{1}{3x^{2/3}}&0&0\\\\0&1&0\\\\-\\sin(x)&0&0\\end{pmatrix}$', '$\\begin{pmatrix}\\frac{1}{3\\sqrt[3]{x}^2}&0&0\\\\0&1&0\\\\-\\sin(x)&0&0\\\\\\end{pmatrix}$', True),
        ('$-34x-45y+20z-100=0$', '$34x+45y-20z+100=0$', True),
        ('$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}$', '$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}$', True),
        ('$(+5)(b+2)$', '$(a+5)(b+2)$', False),
        ('$\\frac{1+\\sqrt{5}}{2}$', '$2$', False),
        ('$\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}$', '$4$', False),
        ('$1$', '$1\\sqrt{19}$', False),
        ('$x+1$', '$x+2n+1$', False),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_math_extraction_edge_cases
    'huggingface/Math-Verify tests/test_all.py::test_math_extraction_edge_cases': [
        ('and then Alice wins the game from that point on. The probability of this sequence of events is (1/2) * (1/2) * P(A), since each flip has a 1/2 chance of happening. So, we can rewrite the equation as: P(A) = 1/2 + (1/2) * (1/2) * P(A) Now, we can solve for P(A): P(A) - (1/4) * P(A) = 1/2 (3/4) * P(A) = 1/2 P(A) = (1/2) / (3/4) P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user', '$2/3$', True),
        ('Since $AP:PB = 1:4,$ we can write \\[\\frac{\\overrightarrow{P} - \\overrightarrow{A}}{1} = \\frac{\\overrightarrow{B} - \\overrightarrow{P}}{4}.\\]Isolating $\\overrightarrow{P},$ we find \\[\\overrightarrow{P} = \\frac{4}{5} \\overrightarrow{A} + \\frac{1}{5} \\overrightarrow{B}.\\]Thus, $(t,u) = \\boxed{\\left( \\frac{4}{5}, \\frac{1}{5} \\right)}.$ Final Answer: The final answer is $\\left( \\frac{4}{5}, \\frac{1}{5} \\right)$. I hope it is correct. <|im_start|>user', '$\\\\left(\\\\frac{4}{5},\\\\frac{1}{5}\\\\right)$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_math_extraction_additional_cases
    'huggingface/Math-Verify tests/test_all.py::test_math_extraction_additional_cases': [
        ('$x \\in [-2,7]$', '$less than or equal to zero between its roots. Therefore, the solution to the inequality is the interval between -2 and 7, including the endpoints.\n\nThus, the solution in interval notation is:\n\n\\[ \\boxed{[-2, 7]} \\]$', True),
        ('Final Answer: The largest $n$ is 34.', '$34$', True),
        ('Since $AP:PB = 1:4,$ we can write \\[\\frac{\\overrightarrow{A} - \\overrightarrow{P}}{1} = \\frac{\\overrightarrow{B} - \\overrightarrow{P}}{4}.\\]Isolating $\\overrightarrow{P},$ we find \\[\\overrightarrow{P} = \\frac{4}{3} \\overrightarrow{A} - \\frac{1}{3} \\overrightarrow{B}.\\]Thus, $(t,u) = \\boxed{\\left( \\frac{4}{3}, -\\frac{1}{3} \\right)}.$', '$\\\\left( \\\\frac{4}{3}, -\\\\frac{1}{3} \\\\right)$', True),
        ('${1,3}$', '$(3,1)$', False),
        ('${1,3}$', '$(1,3)$', True),
        ('Since all members of each party sit together, we can treat each party as a single block. There are 2 blocks (one for each party), and they can be arranged in a circle in $(2-1)! = 1! = 1$ way. Within each block, the members can be arranged in $5!$ ways. So, the total number of distinguishable ways is $1 \\times 5! \\times 5! = 120 \\times 120 = \\boxed{14400}$. Final Answer: The final answer is 14400. I hope it is correct.', '$14400$', True),
        ('To find the cost of the fudge, we need to multiply the weight of the fudge by the price per pound. Weight of fudge = $\\frac{7}{9}$ pounds Price per pound = $10 Cost of fudge = Weight of fudge $\\times$ Price per pound = $\\frac{7}{9} \\times 10$ = $\\frac{70}{9}$ Now, we need to round this value to the nearest cent. $\\frac{70}{9} \\approx 7.78$ So, Anna pays approximately $7.78 for her fudge. Final Answer: The final answer is 7.78.', '$7.78$', True),
        ('The line $L$ is the intersection of the two planes, so it is perpendicular to the normal vectors of both planes. The normal vectors are $\\mathbf{n}_1 = \\langle 1,1,1\\rangle$ and $\\mathbf{n}_2 = \\langle 2,3,4\\rangle$. Therefore, the direction vector of $L$ is $\\mathbf{v} = \\mathbf{n}_1 \\times \\mathbf{n}_2 = \\langle -1,2,1\\rangle$. The equation of the plane containing $L$ and the point $(1,1,1)$ is then $$-1(x-1)+2(y-1)+1(z-1)=0\\Rightarrow\\boxed{x-2y+z-1=0}.$$ Final Answer: The final answer is $x-2y+z-1=0$. I hope it is correct.', '$x-2y+z-1=0$', True),
        ('Thus, the values of \\( k \\) for which the quadratic has real roots are: \\[ \\boxed{[-4, 0]} \\]', '$[-4,0]$', True),
        ('The solution to the inequality is \\( x \\in (-6, 10) \\). Final Answer: The final answer is \\((-6, 10)\\). I hope it is correct.', 'Factoring the denominator on the left side gives \\[ \\frac{4x}{(x-5)(x-3)}=\\frac{A}{x-3}+\\frac{B}{x-5}. \\]Then, we multiply both sides of the equation by $(x - 3)(x - 5)$ to get \\[ 4x = A(x-5) + B(x-3). \\]If the linear expression $4x$ agrees with the linear expression $A(x-5) + B(x-3)$ at all values of $x$ besides 3 and 5, then the two expressions must agree for $x=3$ and $x=5$ as well. Substituting $x = 3$, we get $12 = -2A$, so $A = -6$. Likewise, we plug in $x = 5$ to solve for $B$. Substituting $x = 5$, we get $20 = 2B$, so $B = 10$. Therefore, $(A, B) = \\boxed{(-6, 10)}.$', True),
        ('$\\boxed{\\text{(C)}}.$', '\\(\\boxed{\\text{C}}\\).', True),
        ('is $\\boxed{11,\\! 111,\\! 111,\\! 100}$', ' So the answer is: \\[ \\boxed{11111111100} \\]', True),
        ('is $\\boxed{32,\\! 349}$', ' So the answer is: \\[ \\boxed{32349} \\]', True),
        ('is $\\boxed{32, 349}$', ' So the answer is: \\[ \\boxed{32349} \\]', False),
        ('Thus, the answer is $x \\in \\boxed{(2,12) \\cup (12,102)}$', 'Thus, the domain of the function \\( f(x) \\) is: \\[ \\boxed{(2, 12) \\cup (12, 102)} \\]', True),
        ('$E$', '$\\text{E}$', True),
        ('$\\boxed{1,2}$', '$\\boxed{1}\\boxed{2}$', True),
    ],
    # huggingface/Math-Verify, tests/test_all.py (commit 5d148cf), test_set_rel_assymetry
    'huggingface/Math-Verify tests/test_all.py::test_set_rel_assymetry': [
        ('$x \\in [-2,7]$', '$-2 \\\\le x \\\\le 7$', True),
        ('$-2 \\\\le x \\\\le 7$', '$x \\in [-2,7]$', True),
    ],
    # huggingface/Math-Verify, tests/test_numina_cases.py (commit 5d148cf), test_numina_cases
    'huggingface/Math-Verify tests/test_numina_cases.py::test_numina_cases': [
        ('$\\boxed{(3, 37, 3, 13), (3, 17, 3, 7), (3, 3, 2, 3), (3,17,3,7), (17,3,3,7), (37,3,3,13)}$', '$(37,3,3,13),(17,3,3,7),(3,37,3,13),(3,17,3,7),(3,3,2,3)$', True),
        ('$(3,2)$', '$(p,q)=(3,2)$', True),
        ('\\boxed{(4, 0, 6), (4, -2, 6), (0, 0, 6), (0, -2, 6), (4, 0, 0), (4, -2, 0), (0, 0, 0), (0, -2, 0)}', '$(0;0;0),(0;-2;0),(0;0;6),(0;-2;6),(4;0;0),(4;-2;0),(4;0;6),(4;-2;6)$', True),
        ('$z \\in \\left[-\\frac{3}{2}, -1\\right] \\cup \\left[1, \\frac{3}{2}\\right]$', '$1\\leq|z|\\leq \\frac{3}{2}$', True),
        ('$\\boxed{\\{-12, -11, -10, -8, -7, -6\\}}$', '$-12;-11;-10;-8;-7;-6$', True),
        ('$\\boxed{4, 5}$', '$AB=4,CD=5$', True),
        ('$\\boxed{(7,11),\\ (11,7)}$', '$(11,7)or(7,11)$', True),
        ('$\\boxed{7:32}$', '$S_{MBCN}:S=7:32$', True),
        ('$\\frac{1}{\\sqrt{6}}$', '$\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}$', True),
        ('$(5,2),(7,2)$', '$p=5,q=2;p=7,q=2$', True),
        ('$(3,2,7)$', '$(p,q,r)=(3,2,7)$', True),
        ('$11:21$', '$V_{1}:V_{2}=11:21$', True),
        ('solutions are:\n\n\\[\n\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}, \\boxed{(-20, -1)}\n\\]', '$(2,1),(1,2),(-1,-20),(-20,-1)$', True),
        ('$\\boxed{-2,1}$.', '\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).', True),
        ('$odd$', '$\\text{odd}$', True),
        ('$e$', '$\\text{e}$', True),
        ('$E$', '$\\text{E}$', True),
        ('$\\text{E}$', '$d$', False),
        ('$\\boxed{1,2,3}$', '$1$ and $2$ and $3$', True),
        ('$\\boxed{(3, 37, 3, 13), (3, 17, 3, 7), (3, 3, 2, 3), (3,17,3,7), (17,3,3,7), (37,3,3,13)}$', '$(37,3,3),(17,3,3,7),(3,37,3,13),(3,17,3,7),(3,3,2,3)$', False),
        ('$\\boxed{(3, 2)}$', '$(p,q)=(3,2)$', True),
        ('$\\boxed{-5, \\frac{14}{3}}$', '\\boxed{x = -5,\\ p = \\frac{14}{3}} ', True),
        ('$\\boxed{-10,-8,4}$', '\\boxed{a=4,\\,-8,\\,-10}', True),
        ('W(x)=1orW(x)=-1', '\\\\boxed{W(n) = 1 \\\\text{ and } W(n) = -1', True),
        ('$21,16,11$', '$21,16$ or $11$', True),
        ('$p=-1,p=\\frac{15}{8}$', '\\n\\n\\[ \\boxed{p = -1 \\text{ and } p = \\dfrac{15}{8}} \\]', True),
        ('$(0,1)$', '$0<f(x)<1$', True),
        ('$\\boxed{6,8}$', '\\(\\boxed{6 \\text{ and } 8}\\)', True),
        ('$Even$', '$\\text{Even}$', True),
    ],
    # huggingface/Math-Verify, tests/test_open_thoughts.py (commit 5d148cf), test_open_thoughts
    'huggingface/Math-Verify tests/test_open_thoughts.py::test_open_thoughts': [
        ('$${2, 3, 5, 7, 13}$$', '$$\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}$$', True),
        ('$$f(y) = y$$', '$$f(y) = y$$', True),
        ('$$(-793, 10)$$', '$$-793 < a < 10$$', True),
        ('$$\\text{The midpoints form a regular hexagon}$$', '$$\\text{The midpoints form a regular hexagon}$$', True),
        ('$$\\boxed{a_{37} = 19, \\quad a_3 = 2}$$', '$$a_3 = 2, a_{37} = 19$$', True),
        ('$$\\boxed{(2, 2), (1, 3), (3, 3)}$$', '$$(2, 2), (1, 3), (3, 3)$$', True),
        ('$$(1, +\\infty)$$', '$$(1, +\\infty)$$', True),
        ('$$\\boxed{x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}}$$', '$$x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}$$', True),
        ('$$\\boxed{0.06 \\text{ yuan}}$$', '$$0.06 \\text{ yuan}$$', True),
        ('$$\\boxed{(x, y) = (5, 8) \\quad \\text{and} \\quad (8, 5)}$$', '$$(5, 8), (8, 5)$$', True),
        ('$$\\boxed{667}$$', '$$667$$', True),
        ('$$\\boxed{6 \\text{ and } 8}$$', '$$6 \\text{ and } 8$$', True),
        ('$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$', '$$(2, 2), (6, 2)$$', True),
        ('$$\\boxed{(98, 2)} \\quad \\text{and} \\quad \\boxed{(99, 503)}$$', '$$(98, 2), (99, 503)$$', True),
        ('$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$', '$$(3, 3), (1, 1)$$', True),
        ('$$\\boxed{k \\ge 2}$$', '$$k \\ge 2$$', True),
        ('$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$', '$$k = 45, n = 2$$', True),
        ('\\boxed{1} and \\boxed{2} and \\boxed{3}', '$${1,2,3}$$', True),
        ('\\boxed{1},\\boxed{2},\\boxed{3}', '$${1,2,3}$$', True),
        ('$$1$$', '$$|AB|=1$$', True),
        ('$$1$$', '$$A:B=1$$', True),
        ('$$1$$', '$$f(x)=1$$', True),
        ('$\\boxed{10^{\\frac{\\sqrt{13} - 5}{6}}} \\quad \\text{and} \\quad \\boxed{10^{-\\frac{5 + \\sqrt{13}}{6}}}$', '$x_{1}=10^{\\frac{-5+\\sqrt{13}}{6}},\\quadx_{2}=10^{\\frac{-5-\\sqrt{13}}{6}}$', True),
        ('\\($y_1 = \\boxed{-2(x - 1)^2 + 5} \\) and \\( y_2 = \\boxed{3(x + 2)^2 - 2} \\) ', '$y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}+12 x+10$', True),
        ('$\\boxed{\\dfrac{108 + 31\\sqrt{5}}{216}} \\quad \\text{and} \\quad \\boxed{\\dfrac{108 - 31\\sqrt{5}}{216}}$', '$x_{1}=\\frac{1}{2}+\\frac{31\\sqrt{5}}{216},\\quadx_{2}=\\frac{1}{2}-\\frac{31\\sqrt{5}}{216}$', True),
        ('$\\boxed{1,2}$', '\\boxed{1} papers and \\boxed{2} bins', True),
        ('$\\boxed{1,2}$', '\\boxed{1} no no no no no \\boxed{2}', False),
    ],
    # huggingface/Math-Verify, tests/test_boxed.py (commit 5d148cf), test_boxed
    'huggingface/Math-Verify tests/test_boxed.py::test_boxed': [
        ('${35 cm,4}$', '$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$', True),
        ('$004$', ' the answer should be \\\\boxed{004}.\\n\\nBut let me check again: the sum is 2,552,004. The last three digits are 004. Therefore, when divided by 1000, the remainder is 004. So, \\\\boxed{004} is the correct answer.\\n\\n**Final Answer**\\n\\\\boxed{004}', True),
        ('$840$', 'SoHi YES.\\n\\n could answer therefore\\\\boxed{840}.,but let me put this after explain.\\n\\n**Final Answer**\\n\\\\boxed{840}', True),
    ],
    # huggingface/Math-Verify, tests/test_yujianll.py (commit 5d148cf), test_string_extraction
    'huggingface/Math-Verify tests/test_yujianll.py::test_string_extraction': [
        ('$n=1, 2, 3$', '$n=1, 2, 3$', True),
        ('$n=1, 2, 3$', '$n=2, 3, 4$', False),
        ('$D = (0, 1)$', '$D = (0, 1)$', True),
        ('$D = (0, 1.5)$', '$D = (0, 1)$', False),
        ('$F_n = \\sum_{k=0}^{n-2} F_k F_{n-k-2}$', '$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$', False),
        ('$F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k$', '$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$', True),
        ('$19, 46, \\text{ and } 82$', '$19, 46, and 82$', True),
        ('$21, 36, and 82$', '$19, 46, and 82$', False),
        ('$1 - \\frac{1}{\\mathrm{e}}$', '$1 - \\frac{1}{\\mathrm{e}}$', True),
        ('$1 + \\frac{1}{\\mathrm{e}}$', '$1 - \\frac{1}{\\mathrm{e}}$', True),
        ('$2021$', '$\\pm 2021$', False),
        ('${-2021, 2021}$', '$\\pm 2021$', True),
        ('$1:00$', '$12:00$', False),
        ('$12:00$', '$12:00$', True),
    ],
    # hendrycks/math, modeling/math_equivalence_test.py (commit 5f3bf91): is_equiv(test_in, test_out)
    "hendrycks/math modeling/math_equivalence_test.py": [
        ("\\tfrac{1}{2} + \\frac1{72}", "\\\\frac{1}{2} + 2/3", False),
        ("10, 4, -2", "4, 10, -2", False),
        ("10, 4, 2", "4, 12, 2", False),
        ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\\\dfrac{1}{2} +\\frac{1}{72}", True),
        ("10\\text{ units}", "10 ", True),
        ("10\\text{ units}", "100 ", False),
        ("10", "\\$10", True),
        ("\\left(x-2\\right)\\left(x+2\\right)", "(x-2)(x+2)", True),
        ("0.1, 4, 2", "4, .1, 2", False),
        ("0.1", ".1", True),
        ("10\\%", "10", True),
        ("10\\sqrt{3} + \\sqrt4", "10\\sqrt3 + \\sqrt{4}", True),
        ("\\frac34i", "\\frac{3}{4}i", True),
        ("\\tfrac83", "\\frac{8}{3}", True),
        ("5x - 7y + 11z + 4 = 0", "x + y - z + 2 = 0", False),
        ("1/2", "\\frac{1}{2}", True),
    ],
    # NVIDIA/NeMo-Skills, tests/test_math_equal.py (commit 583b90a): math_equal, both argument orders
    "NVIDIA/NeMo-Skills tests/test_math_equal.py::test_correct_examples": [
        *(
            case
            for a, b in [
                ("5", "5"),
                ("5", "5.0"),
                ("1/2", "0.5"),
                ("\\frac{1}{2}", "0.5"),
                ("918\\frac{1}{2}", "918.5"),
                ("x^2+2x+1", "x^2 + 2*x + 1"),
                ("x^2+2x+1", "x^2 + 2*x - (-1)"),
                ("y = x^2+2x+1", "2x+ 1+x^2"),
                ("odd", "\\text{odd}"),
                ("E", "\\mathrm{E}"),
                ("A", "\\textbf{A}"),
                ("f'", "f'"),
                ("185", "185\\"),
                ("185\\", "185\\"),
                (".185", "0.185"),
                ("\\frac {1}{2}", "0.5"),
                ("17\\text{ any text}", "17"),
                ("\\$10", "10"),
                ("10%", "10"),
                ("10\\%", "10"),
                ("2.5", "\\frac{5}{2}"),
                ("\\frac{1}{3}", "\\dfrac{1}{3}"),
                ("(r+5)(r+5)", "(r+5)^2"),
                ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{3} \\approx 0.577"),
                ("C", "C. x = 42"),
                (
                    "\\begin{pmatrix}0&0&0\\\\0&1&0\\\\0&0&1\\end{pmatrix}",
                    "\\begin{bmatrix} 0 & 0 & 0 \\\\ 0 & 1 & 0 \\\\ 0 & 0 & 1 \\end{bmatrix}",
                ),
            ]
            for case in ((a, b, True), (b, a, True))
        ),
    ],
    "NVIDIA/NeMo-Skills tests/test_math_equal.py::test_incorrect_examples": [
        *(
            case
            for a, b in [
                ("5", "5.001"),
                ("x^2+2x+1", "x^3+2x+1"),
                ("odd", "\\text{oddd}"),
                ("E", "\\mathrm{E}*2"),
                ("\\sqrt{67},-\\sqrt{85}", "\\sqrt{67}"),
            ]
            for case in ((a, b, False), (b, a, False))
        ),
    ],
    # QwenLM/Qwen2.5-Math, evaluation/grader.py (commit 29a82a8), class TestMathEquality
    "QwenLM/Qwen2.5-Math evaluation/grader.py::TestMathEquality": [
        ("10", "10", True),
        ("10%", "0.1", True),
        ("10%", "0.2", False),
        ("10", "20", False),
        ("[1, 2, 3]", "[1, 2, 3]", True),
        ("[1, 2, 3]", "[1, 2, 4]", False),
        ("(1, 2, 3)", "(1, 2, 3)", True),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", False),
        ("x = y", "x = y", True),
        ("x = y", "x = z", False),
        ("x = 10", "10", True),
        ("10", "x = 10", True),
    ],
    # openai/simple-evals, common.py (commit f517a91), EQUALITY_TEMPLATE's worked examples:
    # Expression 1 is the reference, Expression 2 the extracted answer (check_equality's order)
    "openai/simple-evals common.py::EQUALITY_TEMPLATE": [
        ("$3+2x$", "$2x+3$", True),
        ("1.5", "3/2", True),
        ("$y^2+2y+1$", "$x^2+2x+1$", False),
        ("$(x+1)^2$", "$x^2+2x+1$", True),
        ("649", "3245/5", False),  # "actually equal", but the template wants no nontrivial simplification
        ("-2/3", "2/(-3)", True),
        ("72", "72 degrees", True),
        ("64 square feet", "64", True),
    ],
    # volcengine/verl, tests/utils/reward_score/test_numeric_canonicalization_on_cpu.py (commit d69068d):
    # is_equiv(remove_boxed(gt), pred)
    "volcengine/verl tests/utils/reward_score/test_numeric_canonicalization_on_cpu.py": [
        ("33", "033", True),
        ("33", "+033", True),
        ("0", "-0", True),
        ("0", "000", True),
    ],
}

COMPLETION_BLOCKS: dict[str, list[Case]] = {
    # huggingface/open-r1, tests/test_rewards.py (commit 031ec05), TestAccuracyReward
    "huggingface/open-r1 tests/test_rewards.py::TestAccuracyReward": [
        ("\\boxed{\\frac{63}{400}}", "\\frac{63}{400}", True),
        ("\\boxed{\\frac{63}{400}}", "63/400", True),
        ("\\boxed{\\frac{64}{400}}", "\\frac{63}{400}", False),
    ],
    # rllm-org/rllm, tests/rewards/test_math_reward.py (commit f21f145): RewardMathFn's is_correct
    # (single string ground truths only; a list takes its first non-empty entry)
    "rllm-org/rllm tests/rewards/test_math_reward.py": [
        ("<think>2 + 2 = 4</think>\nThe answer is \\boxed{4}.", "4", True),
        ("<think>The answer could be written as a fraction or decimal</think>\nThe answer is \\boxed{0.5}.", "0.5", True),
        ("<think>2 + 2 = 5</think>\nThe answer is \\boxed{5}.", "4", False),
        ("The answer is 4.", "4", False),
        ("<think>2 + 2 = 4</think>\nThe answer is 4.", "4", False),
        ("<think>Let me solve this quadratic equation</think>\nThe answer is \\boxed{x = 2, x = -3}.", "x = 2, x = -3", True),
        ("<think>Let me calculate this carefully</think>\nThe answer is \\boxed{24}.", "\\boxed{24}", True),
        ("<think>The answer is approximately pi</think>\nThe answer is \\boxed{3.14159}.", "3.14159", True),
        ("<think>Let me simplify this fraction</think>\nThe answer is \\boxed{\\frac{1}{2}}.", "1/2", True),
        ("<think>...</think>\nThe answer is \\boxed{}.", "42", False),
        ("<think>...</think>\nThe answer is \\boxed{}.", "7", False),
        ("<think>...</think>\nThe answer is \\boxed{42}.", "7", False),
        ("<think>...</think>\nThe answer is \\boxed{0}.", "0", True),
        ("<think>...</think>\nThe answer is \\boxed{0}.", "\\boxed{0}", True),
        ("<think>5 + 5 = 10</think>\nThe answer is \\boxed{10}.", "10", True),
        ("<think>5 + 5 = 11</think>\nThe answer is \\boxed{11}.", "10", False),
        ("The answer is 10.", "10", False),
    ],
}
